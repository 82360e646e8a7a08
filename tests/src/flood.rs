//! The flood issue's attack, shared by its root test (`tests/flood.rs`) and
//! `cargo xtask bench pipeline`: identity `flooder` connects a UDP socket
//! to ever-new allowed destinations (every attempt a distinct event) while
//! identity `quiet` makes denied TCP connects at 50 per second, each from
//! its own process (so each is its own event, with its own exec event).
//!
//! # Layout
//! - [`child_mode`]: the child processes' modes (`udp-flood-distinct`,
//!   `try-tcp`), run by the test helper and the bench binary alike.
//! - [`policy`]: the two identities.
//! - [`run`] -> [`Report`]: the attack against a running agent, and what
//!   reached the event stream and the audit log.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use crate::{Agent, Listener, TestCgroup, agent_bin, execs_with};

/// Handles `udp-flood-distinct RATE SECS` (RATE 0: as fast as it can;
/// prints the attempts) and `try-tcp ADDR MARKER` (prints `OK`, `EPERM` or
/// `ERR <errno>`); `None` for any other mode.
pub fn child_mode(args: &[String]) -> Option<anyhow::Result<()>> {
    match args.get(1).map(String::as_str) {
        Some("udp-flood-distinct") => Some((|| {
            let (rate, secs): (u64, f64) = (args[2].parse()?, args[3].parse()?);
            println!("{}", udp_flood_distinct(rate, secs)?);
            Ok(())
        })()),
        Some("try-tcp") => Some((|| {
            let addr: std::net::SocketAddr = args[2].parse()?;
            println!(
                "{}",
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => "OK".to_string(),
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
                    Err(e) => format!("ERR {}", e.raw_os_error().unwrap_or(-1)),
                }
            );
            Ok(())
        })()),
        _ => None,
    }
}

/// connect() on a UDP socket to ever-new destinations in 10.0.0.0/8 at
/// `rate` per second (0: unpaced) for `secs`; the attempts made.
fn udp_flood_distinct(rate: u64, secs: f64) -> anyhow::Result<u64> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut n: u64 = 0;
    while start.elapsed() < dur {
        let due = if rate == 0 { n + 256 } else { (start.elapsed().as_secs_f64() * rate as f64) as u64 };
        while n < due {
            n += 1;
            let _ = sock.connect((Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff)), 9));
        }
        std::hint::spin_loop();
    }
    Ok(n)
}

/// The policy: `flooder` (allowed 10.0.0.0/8) and `quiet` (default deny).
pub fn policy(flooder: &TestCgroup, quiet: &TestCgroup) -> String {
    crate::policy(
        "zt.test",
        &format!(
            "    - name: flooder\n      selectors:\n        - cgroup: {}/**\n    - name: quiet\n      selectors:\n        - cgroup: {}/**\n  \
             rules:\n    - identity: flooder\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n",
            flooder.rel, quiet.rel
        ),
    )
}

/// What one attack left in the agent's outputs.
#[derive(Debug)]
pub struct Report {
    /// The flooder's attempts, over `secs`.
    pub attempts: u64,
    pub secs: f64,
    /// The quiet identity's denied connects (one process each): how many
    /// were made, and how many of those processes have a denied connect in
    /// the event stream, in the audit log, and an exec event in the stream.
    pub quiet: usize,
    pub in_stream: usize,
    pub in_log: usize,
    pub quiet_execs: usize,
    /// The flooder's attempts reported by connect events, summaries and
    /// folded counts.
    pub evented: u64,
    pub summarized: u64,
    pub folded: u64,
    /// The agent's counters (`status`) and peak RSS (kB) after the flood.
    pub counters: Value,
    pub peak_rss_kb: Option<u64>,
    /// Policy reloads applied during the run.
    pub reloads_applied: usize,
    /// Denied attempts of the flooder (its destinations are all allowed),
    /// and the quiet processes' exec events with another identity.
    pub flooder_denied: u64,
    pub quiet_exec_identities: Vec<String>,
}

/// Runs the attack for `secs` against `agent` (started with [`policy`]);
/// `child` is a binary with [`child_mode`]. With `reload_every`, the
/// agent's policy file is rewritten that often during the flood (the same
/// rules, so every generation decides alike).
pub fn run(
    agent: &Agent,
    flooder: &TestCgroup,
    quiet: &TestCgroup,
    child: &Path,
    secs: f64,
    reload_every: Option<Duration>,
) -> anyhow::Result<Report> {
    let listener = Listener::new();
    let flood = flooder.command(child).args(["udp-flood-distinct", "0", &secs.to_string()]).stdout(Stdio::piped()).spawn()?;
    let reloads = reload_every.map(|every| {
        let (file, text) = (agent.dir.join("policy.yaml"), policy(flooder, quiet));
        let until = Instant::now() + Duration::from_secs_f64(secs - 0.5);
        std::thread::spawn(move || {
            let mut n = 0;
            while Instant::now() < until {
                std::thread::sleep(every);
                n += 1;
                // Written aside and renamed into place, as an editor or a
                // config manager does.
                let tmp = file.with_extension("tmp");
                std::fs::write(&tmp, format!("{text}# reload {n}\n")).expect("writing the policy");
                std::fs::rename(&tmp, &file).expect("renaming the policy");
            }
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let n = ((secs - 1.0).max(1.0) * 50.0) as u32;
    let start = Instant::now();
    let mut pids = BTreeSet::new();
    for i in 0..n {
        let proc = quiet.command(child).args(["try-tcp", &listener.addr(), "ZTMARK-quiet"]).stdout(Stdio::piped()).spawn()?;
        pids.insert(proc.id() as u64);
        let out = proc.wait_with_output()?;
        anyhow::ensure!(String::from_utf8_lossy(&out.stdout).trim() == "EPERM", "the quiet identity's connect {i} was not denied: {out:?}");
        if let Some(rest) = (Duration::from_millis(20) * (i + 1)).checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let flood = flood.wait_with_output()?;
    if let Some(r) = reloads {
        r.join().map_err(|_| anyhow::anyhow!("the reload thread panicked"))?;
    }
    let attempts: u64 = String::from_utf8_lossy(&flood.stdout).trim().parse().context("the flooder's count")?;

    // Settled: the flush reports what the kernel only counted within a
    // second or two; then every count is final.
    std::thread::sleep(Duration::from_secs(2));
    let settle = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let n = agent.event_count();
        if last == Some(n) || Instant::now() > settle {
            break;
        }
        last = Some(n);
    }
    let events = agent.events();
    let quiet_procs: BTreeSet<u64> = execs_with(&events, "ZTMARK-quiet")
        .iter()
        .filter(|e| e["identity"]["name"] == "quiet")
        .filter_map(|e| e["process"]["pid"].as_u64())
        .collect();
    let denied = |records: &[Value], inner: &dyn Fn(&Value) -> &Value| -> BTreeSet<u64> {
        records
            .iter()
            .map(inner)
            .filter(|e| e["identity"]["name"] == "quiet" && e["connect"]["action"] == "denied")
            .filter_map(|e| e["process"]["pid"].as_u64())
            .collect()
    };
    let in_stream = denied(&events, &|e| e);
    let in_log = denied(&audit_records(&agent.dir.join("audit"))?, &|r| &r["payload"]);
    let of_flooder = |kind: &str, field: &str| -> u64 {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["identity"]["name"] == "flooder")
            .map(|e| e[kind][field].as_u64().unwrap_or(0))
            .sum()
    };
    let reloads_applied =
        events.iter().filter(|e| e["kind"] == "policy" && e["policy"]["action"] == "applied" && e["policy"]["source"] != "start").count();
    Ok(Report {
        reloads_applied,
        attempts,
        secs,
        quiet: pids.len(),
        in_stream: in_stream.intersection(&pids).count(),
        in_log: in_log.intersection(&pids).count(),
        quiet_execs: quiet_procs.intersection(&pids).count(),
        evented: of_flooder("connect", "repeats"),
        summarized: of_flooder("connect_summary", "repeats"),
        folded: ["allowed", "denied", "audited"].iter().map(|f| of_flooder("connect_folded", f)).sum(),
        flooder_denied: of_flooder("connect_folded", "denied")
            + events
                .iter()
                .filter(|e| e["identity"]["name"] == "flooder")
                .filter(|e| e["connect"]["action"] == "denied" || e["connect_summary"]["decision"] == "deny")
                .count() as u64,
        quiet_exec_identities: execs_with(&events, "ZTMARK-quiet")
            .iter()
            .filter(|e| e["identity"]["name"] != "quiet")
            .map(|e| format!("{}: {}", e["process"]["pid"], e["identity"]["name"]))
            .collect(),
        counters: agent.status()["counters"].clone(),
        peak_rss_kb: agent.pid().and_then(peak_rss_kb),
    })
}

/// The audit log's records (`audit show --json`).
pub fn audit_records(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir"]).arg(dir).output()?;
    anyhow::ensure!(o.status.success(), "audit show: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)?.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// A process's peak resident set (`VmHWM`, kB).
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The CPU time a process (all its threads) has used so far, user plus
/// system (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}
