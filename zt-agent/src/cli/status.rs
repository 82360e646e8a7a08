//! `zt-agent status`, `zt-agent probe` and `zt-agent identity quarantine|release`.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use zt_agent::{
    bpf::probe,
    control::{
        self,
        protocol::{Reply, Request, StatusDoc},
    },
};

use super::client;

pub fn status(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let Reply::Status(doc) = client(control::request(socket, &Request::Status))? else { anyhow::bail!("unexpected reply to status") };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let Reply::Verified(report) = client(control::request(socket, &Request::Verify))? else { anyhow::bail!("unexpected reply to verify") };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checked {
            println!("checked: {c}");
        }
        for f in &report.findings {
            println!("FINDING {} {}: {}", f.check, f.subject, f.detail);
        }
        match report.findings.len() {
            0 => println!("verified: {} checks, nothing changed ({} us)", report.checked.len(), report.micros),
            n => println!("{n} finding(s) of {} checks ({} us)", report.checked.len(), report.micros),
        }
    }
    Ok(if report.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn probe(json: bool) -> anyhow::Result<ExitCode> {
    let caps = probe::probe();
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
    } else {
        print!("{}", probe::render(&caps));
        println!();
        for (what, how) in probe::enforcement_paths(&caps) {
            println!("{what}: {how}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render(v: &StatusDoc) -> String {
    let mut s = String::new();
    let i = &v.info;
    let p = &v.policy;
    // Writing to a String cannot fail.
    let _ = writeln!(s, "zt-agent {} (pid {}), running since {}", i.version, i.pid, i.started);
    let _ = writeln!(
        s,
        "policy v{} {} blake3:{} (generation {}, trust domain {}) from {}",
        p.version,
        p.name,
        p.digest,
        p.generation,
        p.trust_domain,
        p.files.join(", ")
    );
    let _ = writeln!(
        s,
        "eBPF object blake3:{}\nmetrics: {} (kernel BPF statistics {})\n\nidentities:",
        i.object_blake3,
        i.metrics.as_deref().map_or_else(|| "off".to_string(), |m| format!("{m}/metrics, /healthz, /readyz")),
        if i.bpf_stats { "on" } else { "off" }
    );
    for (name, id) in &p.identities {
        let _ = writeln!(s, "  {name} {id}");
    }
    s.push_str("\nenforcement paths:\n");
    for (what, how) in &i.paths {
        let _ = writeln!(s, "  {what}: {how}");
    }
    s.push_str("\negress decisions (since start):\n");
    for d in &v.decisions {
        let _ = writeln!(s, "  {}: {} allowed, {} denied, {} audited (would deny)", d.identity, d.allowed, d.denied, d.audited);
    }
    if !v.policy.quarantined.is_empty() {
        let _ = writeln!(s, "\nquarantined (egress deny-all until `zt-agent identity release NAME`): {}", v.policy.quarantined.join(", "));
    }
    if let Some(k) = &v.kubernetes {
        let _ = writeln!(
            s,
            "\nkubernetes pod metadata: {} from {}{}: {} pods, resource version {}, {} lists, {} watch events, {} bad lines, {} pods not cached{}",
            k.state,
            k.api,
            k.node.as_deref().map(|n| format!(" (node {n})")).unwrap_or_default(),
            k.pods,
            k.resource_version,
            k.lists,
            k.watch_events,
            k.bad_lines,
            k.pods_dropped,
            k.last_error
                .as_deref()
                .map(|e| format!("; last error at {}: {e}", k.last_error_at.as_deref().unwrap_or("?")))
                .unwrap_or_default()
        );
    }
    if let Some(ver) = &v.verification {
        let every = match ver.every_secs {
            0 => "on demand only".to_string(),
            n => format!("every {n} s"),
        };
        let last = ver.last_pass.as_deref().unwrap_or("none yet");
        let _ = writeln!(
            s,
            "\ncontinuous verification ({every}): {} passes, last {last}, {} findings since start",
            ver.passes, ver.findings_total
        );
        for f in &ver.findings {
            let _ = writeln!(s, "  FINDING {} {}: {}", f.check, f.subject, f.detail);
        }
    }
    if let Some(api) = &v.api {
        let _ = writeln!(
            s,
            "
remote API (mutual TLS): {}, {} grants; calls {} allowed, {} refused; {} open streams",
            api.listen, api.grants, api.allowed, api.refused, api.open_streams
        );
    }
    let _ = writeln!(s, "\nsyscall telemetry (anomaly model): {}", v.syscall_telemetry);
    if !v.anomaly.is_empty() {
        s.push_str("anomaly detection:\n");
        for (name, a) in &v.anomaly {
            let threshold = a.threshold.map_or(String::new(), |t| format!(", threshold {t:.2}"));
            let _ = writeln!(
                s,
                "  {name}: {} ({} calls, {} traces{threshold}), risk {:.2}, {} findings{}",
                a.phase,
                a.calls,
                a.traces,
                a.risk,
                a.findings,
                if a.unscored_threads > 0 { format!(", {} threads NOT scored (detector full)", a.unscored_threads) } else { String::new() }
            );
        }
    }
    if let Some(a) = &v.audit {
        let _ = writeln!(
            s,
            "\naudit log {} (origin {}): {} records, signed size {} root {}, {} write errors",
            a.dir, a.origin, a.records, a.signed_size, a.signed_root, a.write_errors
        );
        for k in &a.verifier_keys {
            let _ = writeln!(s, "  verifier key {k}");
        }
        if let Some(t) = &a.rotation_overlap_until {
            let _ = writeln!(s, "  key rotation: both keys sign until {t}");
        }
        if let Some(f) = &a.unwritable {
            let _ = writeln!(
                s,
                "  UNWRITABLE since {} ({} attempts): {}\n  {} records waiting in memory, {} refused (reported in a loss record once it writes again); nothing is signed meanwhile",
                f.since,
                f.attempts,
                f.error,
                f.buffered,
                f.lost_records()
            );
        }
        if let Some(e) = &a.last_error {
            let _ = writeln!(s, "  last error: {e}");
        }
        if let Some(e) = &a.failed {
            let _ = writeln!(s, "  FAILED: {e}; security events are not being recorded");
        }
    }
    s.push_str("\nhooks:\n");
    for h in &i.hooks {
        let _ = writeln!(s, "  {} ({}): {}", h.program, h.attach_point, h.state);
    }
    s.push_str("\ncounters:\n");
    let c = serde_json::to_value(&v.counters).unwrap_or_default();
    for (k, val) in c.as_object().into_iter().flatten() {
        let _ = writeln!(s, "  {k}: {val}");
    }
    s
}

#[derive(clap::Subcommand)]
pub enum IdentityCommand {
    /// Switch the identity's egress to deny-all until released.
    Quarantine {
        name: String,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Lift a quarantine (an anomaly response or `identity quarantine`).
    Release {
        name: String,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

pub fn identity(c: IdentityCommand) -> anyhow::Result<ExitCode> {
    let (name, on, socket) = match c {
        IdentityCommand::Quarantine { name, socket } => (name, true, socket),
        IdentityCommand::Release { name, socket } => (name, false, socket),
    };
    let req = Request::Quarantine { identity: name.clone(), on };
    let Reply::Policy(o) = client(control::request(&socket, &req))? else { anyhow::bail!("unexpected reply") };
    let what = if on { "quarantined: egress deny-all" } else { "released: its policy's egress rules apply again" };
    println!("identity {name} {what} (policy generation {})", o.generation);
    Ok(ExitCode::SUCCESS)
}
