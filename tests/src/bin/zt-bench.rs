//! Benchmarks, run by `cargo xtask bench <name>`. Every figure is a ratio or
//! a rate measured side by side in one run (interleaved rounds), because the
//! machines are noisy; nothing here is a pass/fail threshold.
//!
//! `attribution`:
//! 1. fork+exec+wait of /bin/true: no agent vs agent loaded, from a
//!    non-agent process and from an agent process (median of per-round p50s).
//! 2. pipeline throughput: connect events offered at ~10k/s and ~100k/s by an
//!    agent process (UDP connect(), which fires the cgroup connect4 hook
//!    without a handshake); events written and dropped, by counter.
//!
//! Internal child modes: `spawn-loop N` and `udp-flood RATE SECS ADDR`.
use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use zt_tests::{Agent, TestCgroup, agent_bin, policy};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("spawn-loop") => spawn_loop(args[2].parse()?),
        Some("udp-flood") => udp_flood(args[2].parse()?, args[3].parse()?, &args[4]),
        Some("attribution") => {
            let rounds = args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)).and_then(|r| r.parse().ok()).unwrap_or(10);
            attribution(rounds)
        }
        _ => anyhow::bail!("usage: zt-bench attribution [--rounds N]"),
    }
}

/// Child mode: N x fork+exec+wait of /bin/true; prints the p50 in ns.
fn spawn_loop(n: usize) -> anyhow::Result<()> {
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        Command::new("/bin/true").status()?;
        t.push(s.elapsed().as_nanos() as u64);
    }
    t.sort_unstable();
    println!("{}", t[n / 2]);
    Ok(())
}

/// Child mode: UDP connect() at about RATE per second for SECS seconds;
/// prints how many were attempted.
fn udp_flood(rate: u64, secs: f64, addr: &str) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    while start.elapsed() < dur {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let _ = sock.connect(addr);
            sent += 1;
        }
        std::hint::spin_loop();
    }
    println!("{sent}");
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn child_out(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd.output().context("bench child")?;
    anyhow::ensure!(out.status.success(), "bench child failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn attribution(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    let me = std::env::current_exe()?;
    let cg = TestCgroup::new(&format!("/zt-bench-{}/agent", std::process::id()))?;
    let pol = policy("zt.bench", &format!("    - name: bench-agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let per_round = 300;
    println!("zt-agent {} — attribution benchmark, {rounds} rounds x {per_round} fork+exec+wait of /bin/true", agent_bin().display());

    let spawn = |agent_proc: bool| -> anyhow::Result<f64> {
        let mut cmd = if agent_proc { cg.command(&me) } else { Command::new(&me) };
        cmd.args(["spawn-loop", &per_round.to_string()]);
        Ok(child_out(cmd)?.parse::<f64>()?)
    };

    // Per variant: (label, agent args or None for no agent, [non-agent, agent] p50 samples).
    let variants: [(&str, Option<&[&str]>); 4] = [
        ("no agent", None),
        ("agent, argv from exec'd image (default)", Some(&["--argv-capture", "kernel"])),
        ("agent, argv at sys_enter_execve", Some(&["--argv-capture", "syscalls"])),
        ("agent, argv from /proc", Some(&["--argv-capture", "proc"])),
    ];
    let mut samples = vec![[Vec::new(), Vec::new()]; variants.len()];
    let mut ratios = vec![[Vec::new(), Vec::new()]; variants.len()];
    for r in 0..rounds {
        let mut line = format!("round {r}:");
        // Rotate the order each round so no variant always runs first.
        let mut this_round = vec![[0.0; 2]; variants.len()];
        for step in 0..variants.len() {
            let vi = (step + r) % variants.len();
            let (label, args) = variants[vi];
            let agent = match args {
                Some(a) => Some(Agent::start("bench", &pol, a)?),
                None => None,
            };
            let p = [spawn(false)?, spawn(true)?];
            if let Some(a) = agent {
                a.stop()?;
            }
            line.push_str(&format!(" {label} {:.0}/{:.0} us;", p[0] / 1e3, p[1] / 1e3));
            this_round[vi] = p;
        }
        for (vi, p) in this_round.iter().enumerate() {
            for k in 0..2 {
                samples[vi][k].push(p[k]);
                ratios[vi][k].push(p[k] / this_round[0][k]);
            }
        }
        eprintln!("{line} (non-agent/agent process)");
    }
    println!();
    println!("fork+exec+wait of /bin/true, p50 (median over rounds); ratio = median of per-round ratios to 'no agent'");
    for (k, who) in ["from a non-agent process", "from an agent process"].iter().enumerate() {
        println!("  {who}:");
        for (vi, (label, _)) in variants.iter().enumerate() {
            println!("    {label:<42} {:>6.0} us   ratio {:.3}", median(&mut samples[vi][k]) / 1e3, median(&mut ratios[vi][k]));
        }
    }

    println!();
    println!("pipeline: connect events offered by an agent process (UDP connect), 3 s each");
    println!("  offered/s   attempted   written   written/s   kernel ringbuf loss   queue overflow   output overflow");
    for rate in [10_000u64, 100_000] {
        let agent = Agent::start("bench-pipe", &pol, &[])?;
        let target = zt_tests::Listener::new();
        let mut cmd = cg.command(&me);
        cmd.args(["udp-flood", &rate.to_string(), "3", &target.addr()]);
        let attempted: u64 = child_out(cmd)?.parse()?;
        // Let the consumer drain, then read the counters from the live agent.
        std::thread::sleep(Duration::from_millis(500));
        let status = child_out({
            let mut c = Command::new(agent_bin());
            c.args(["status", "--json", "--socket"]).arg(&agent.socket);
            c
        })?;
        let v: serde_json::Value = serde_json::from_str(&status)?;
        let events = agent.stop()?;
        let written = events.iter().filter(|e| e["kind"] == "connect" && e["connect"]["port"] == target.port).count() as u64;
        let c = &v["counters"];
        println!(
            "  {:>9}   {:>9}   {:>7}   {:>9.0}   {:>19}   {:>14}   {:>15}",
            rate,
            attempted,
            written,
            written as f64 / 3.0,
            c["kernel_loss"]["ringbuf_connect"],
            c["queue_overflow"],
            c["output_overflow"]
        );
    }
    Ok(())
}
