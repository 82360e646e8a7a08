//! `zt-bench anomaly`: what the syscall anomaly model costs and delivers.
//!
//! - getppid() per call, side by side in each round: no agent; the agent
//!   with no identity watched (telemetry detached); the agent with an
//!   identity watched (telemetry attached), for a process without an
//!   identity and for the identity's own process.
//! - Telemetry delivery at an offered 100k and 1M syscalls/s by an identity
//!   process (`model record` counts what reached user space; the kernel's
//!   `ringbuf_syscalls` and the pipeline's `queue_overflow` what did not).
//! - Scoring: a baseline learnt from a recorded real workload (shells
//!   running small tools), its size, and the detector's cost per call and
//!   findings on held-out traces of the same workload.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use zt_agent::{
    anomaly::{
        live::{Baseline, Board, Detector, Outcome, REORDER_NS},
        trace,
    },
    identity::{Identity, IdentityConfig},
    policy::model::{Anomaly, AnomalyMode, AnomalyResponse},
};
use zt_tests::{Agent, TestCgroup, agent_bin, policy};

use super::{child_out, median};

/// Child mode `syscall-rate RATE MS`: getppid() at RATE calls per second
/// for MS ms (paced per millisecond); prints the calls made.
pub fn syscall_rate(rate: u64, ms: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut made = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        let due = (start.elapsed().as_nanos() as u64).saturating_mul(rate) / 1_000_000_000;
        while made < due {
            // SAFETY: no arguments, no memory.
            unsafe { libc::getppid() };
            made += 1;
        }
        std::hint::spin_loop();
    }
    println!("{made}");
    Ok(())
}

const WORKLOAD: &str = "for i in 1 2 3 4 5 6 7 8; do cat /etc/hostname >/dev/null; ls /usr/bin >/dev/null; sort /etc/passwd >/dev/null; grep -c root /etc/group >/dev/null; head -c 100 /etc/services | wc -c >/dev/null; sed -n 1p /etc/os-release >/dev/null; done";

fn record(agent: &Agent, out: &Path, secs: u64) -> std::process::Child {
    agent.model_record("bench-agent", out, &format!("{secs}s"))
}

/// `model record`'s summary line: (traces, calls).
fn recorded(child: std::process::Child) -> anyhow::Result<(u64, u64)> {
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "model record: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    // "<dir>: N traces, M calls (K beyond the limit, not kept)"
    let nums: Vec<u64> = text.split_whitespace().filter_map(|w| w.trim_start_matches('(').parse().ok()).collect();
    anyhow::ensure!(nums.len() >= 3, "unexpected summary {text:?}");
    Ok((nums[0], nums[1] + nums[2]))
}

fn loss(agent: &Agent) -> (u64, u64) {
    let st = agent.status();
    (st["counters"]["kernel_loss"]["ringbuf_syscalls"].as_u64().unwrap_or(0), st["counters"]["queue_overflow"].as_u64().unwrap_or(0))
}

pub fn bench(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    let me = std::env::current_exe()?;
    let cg = TestCgroup::new(&format!("/zt-bench-{}/agent", std::process::id()))?;
    let ident = format!("    - name: bench-agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel);
    let plain = policy("zt.bench", &ident);
    let watched = policy("zt.bench", &format!("{ident}      anomaly: {{mode: learn, learnCalls: 5000000}}\n"));
    println!("zt-agent {} — anomaly benchmark, {rounds} rounds", agent_bin().display());

    // getppid() per call, four ways, side by side in each round.
    let variants =
        ["no agent", "agent, nothing watched", "agent watching an identity: a process without one", "the watched identity's process"];
    let mut ns = vec![Vec::new(); variants.len()];
    let mut ratio = vec![Vec::new(); variants.len()];
    let getppid = |in_cgroup: bool| -> anyhow::Result<f64> {
        let mut cmd = if in_cgroup { cg.command(&me) } else { Command::new(&me) };
        cmd.args(["syscall-loop", "getppid", "200000"]);
        Ok(child_out(cmd)?.parse::<f64>()?)
    };
    for _ in 0..rounds {
        let base = getppid(false)?;
        let a = Agent::start("bench-anomaly", &plain, &[])?;
        let nothing = getppid(false)?;
        drop(a);
        let a = Agent::start("bench-anomaly", &watched, &[])?;
        a.wait_status("the identity watched", |s| s["anomaly"]["bench-agent"]["phase"] == "learning");
        let other = getppid(false)?;
        let own = getppid(true)?;
        drop(a);
        for (i, v) in [base, nothing, other, own].into_iter().enumerate() {
            ns[i].push(v);
            ratio[i].push(v / base);
        }
    }
    println!("getppid() per call (median of {rounds} rounds; ratio to no agent in the same round):");
    for (i, name) in variants.iter().enumerate() {
        println!("  {name:52} {:7.1} ns  x{:.2}", median(&mut ns[i]), median(&mut ratio[i]));
    }

    // Telemetry delivery at an offered rate.
    let agent = Agent::start("bench-anomaly", &plain, &[])?;
    let dir = tempfile::tempdir()?;
    for rate in [100_000u64, 1_000_000] {
        let (lost0, over0) = loss(&agent);
        let rec = record(&agent, &dir.path().join(format!("rate-{rate}")), 4);
        std::thread::sleep(Duration::from_millis(500));
        let mut cmd = cg.command(&me);
        cmd.args(["syscall-rate", &rate.to_string(), "2000"]);
        // The recording is waited for whatever the load did.
        let offered = child_out(cmd);
        let (_, delivered) = recorded(rec)?;
        let offered: u64 = offered?.parse()?;
        let (lost1, over1) = loss(&agent);
        println!(
            "telemetry at {rate}/s offered: {offered} calls made, {delivered} recorded ({:.2}% of them; the process's other calls count too), {} batches lost in the kernel, {} records dropped in the pipeline",
            100.0 * delivered as f64 / offered as f64,
            lost1 - lost0,
            over1 - over0
        );
    }

    // A baseline from a real workload, and the detector's cost on held-out traces.
    let traces_dir = dir.path().join("workload");
    let rec = record(&agent, &traces_dir, 12);
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ran = Ok(());
    while Instant::now() < deadline && ran.is_ok() {
        ran = cg.command("sh").args(["-c", WORKLOAD]).status().context("workload").map(drop);
    }
    recorded(rec)?;
    ran?;
    drop(agent);
    let mut traces: Vec<Vec<u32>> = trace::read_dir(&traces_dir)?.into_iter().map(|t| t.calls).collect();
    traces.sort();
    let held_out: Vec<Vec<u32>> = traces.iter().skip(1).step_by(2).cloned().collect();
    let learn: Vec<Vec<u32>> = traces.iter().step_by(2).cloned().collect();
    let started = Instant::now();
    let learn_calls: usize = learn.iter().map(Vec::len).sum();
    let baseline = Baseline::learn("bench-agent", learn, Default::default(), "now".into());
    let learn_ms = started.elapsed().as_secs_f64() * 1000.0;
    let file = dir.path().join("baselines").join("bench-agent.json");
    baseline.save(&file)?;
    let size = std::fs::metadata(&file)?.len();
    println!(
        "baseline: {learn_calls} calls of {} traces learnt in {learn_ms:.0} ms; {} n-grams, {} call-mix windows; file {:.1} KiB",
        traces.len().div_ceil(2),
        baseline.model.ngrams.len(),
        baseline.model.frequencies.baseline_len(),
        size as f64 / 1024.0
    );
    for rate in [0.005, 0.01, 0.05] {
        let mut d = Detector::new(Some(file.parent().unwrap().to_path_buf()), Board::default());
        let anomaly = Anomaly { mode: AnomalyMode::Detect, response: AnomalyResponse::Alert, false_positive_rate: rate, learn_calls: 1000 };
        let config = IdentityConfig {
            name: "bench".into(),
            trust_domain: "zt.bench".into(),
            identities: vec![Identity {
                id: 1,
                name: "bench-agent".into(),
                spiffe_id: String::new(),
                selectors: Default::default(),
                anomaly: Some(anomaly),
            }],
        };
        d.set_identities(&config);
        let batches: Vec<(u32, Vec<u16>)> = held_out
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.chunks(60).map(move |c| (i as u32 + 1, c.iter().map(|&x| x as u16).collect())))
            .collect();
        let calls: usize = held_out.iter().map(Vec::len).sum();
        let t = Instant::now();
        let mut findings = 0;
        let mut clock = 0u64;
        for (tgid, b) in &batches {
            clock += 1_000;
            findings += usize::from(matches!(d.batch(1, *tgid, *tgid, clock, None, b), Some(Outcome::Detection { .. })));
        }
        for tgid in 1..=held_out.len() as u32 {
            d.exit(tgid, clock);
        }
        findings += d.expire(clock + REORDER_NS + 2_000_000_000).iter().filter(|o| matches!(o, Outcome::Detection { .. })).count();
        let elapsed = t.elapsed().as_nanos() as f64;
        println!(
            "scoring at falsePositiveRate {rate}: {:.0} ns per call ({calls} calls of {} held-out traces); {findings} findings ({:.1}% of the traces: false positives, the workload is the baseline's)",
            elapsed / calls as f64,
            held_out.len(),
            100.0 * findings as f64 / held_out.len() as f64
        );
    }
    Ok(())
}
