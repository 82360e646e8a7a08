//! `zt-bench verify`: what continuous verification costs. In each round,
//! side by side: the time of a pass as the agent measures it (the periodic
//! pass: a `BPF_PROG_QUERY` per attach type, the policy tables in force
//! read back, the agent processes' executables and a `stat` of the binary;
//! the on-demand pass of `zt-agent verify`, which also hashes the binary
//! and verifies the whole audit log), and
//! the loopback connect() latency of an agent process, p50 and p99 of
//! 3,000, with no pass running and with `zt-agent verify` passes back to
//! back (the worst case: the periodic pass runs every 5 s by default).
use std::{
    path::Path,
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use zt_tests::{Agent, Listener, TestCgroup, agent_bin};

use super::{child_out, median, net_policy};

/// Child mode: N loopback TCP connects; prints p50 and p99 in ns.
pub fn connect_percentiles(n: usize, addr: &str) -> anyhow::Result<()> {
    let t = super::connect_times(n, addr)?;
    println!("{} {}", t[n / 2], t[n * 99 / 100]);
    Ok(())
}

fn verify_micros(socket: &Path) -> anyhow::Result<f64> {
    let o = Command::new(agent_bin()).args(["verify", "--json", "--socket"]).arg(socket).output()?;
    anyhow::ensure!(o.status.success(), "zt-agent verify failed: {}", String::from_utf8_lossy(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    v["micros"].as_f64().context("micros")
}

pub fn bench(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    let me = std::env::current_exe()?;
    let cg = TestCgroup::new(&format!("/zt-bench-verify-{}/agent", std::process::id()))?;
    let l = Listener::new();
    let n = 3000;
    println!("zt-agent {} — verify benchmark ({rounds} rounds)", agent_bin().display());
    let agent = Agent::start("bench-verify", &net_policy(&cg.rel, 1, l.port), &["--verify-every", "1"])?;
    let connect = || -> anyhow::Result<(f64, f64)> {
        let mut cmd = cg.command(&me);
        cmd.args(["connect-percentiles", &n.to_string(), &l.addr()]);
        let out = child_out(cmd)?;
        let mut it = out.split_whitespace().map(str::parse::<f64>);
        Ok((it.next().context("p50")??, it.next().context("p99")??))
    };
    let (mut periodic, mut full) = (Vec::new(), Vec::new());
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        periodic.push(agent.status()["verification"]["last_pass_micros"].as_f64().context("last_pass_micros")?);
        full.push(verify_micros(&agent.socket)?);
        // Connect latency: no pass in flight, then passes back to back.
        let q = connect()?;
        let stop = AtomicBool::new(false);
        let b = std::thread::scope(|s| {
            let looper = s.spawn(|| {
                let mut passes = 0;
                while !stop.load(Ordering::Relaxed) {
                    let child: std::io::Result<Child> = Command::new(agent_bin())
                        .args(["verify", "--socket"])
                        .arg(&agent.socket)
                        .stdout(std::process::Stdio::null())
                        .spawn();
                    if child.and_then(|mut c| c.wait()).is_ok() {
                        passes += 1;
                    }
                }
                passes
            });
            let b = connect();
            stop.store(true, Ordering::Relaxed);
            (b, looper.join().expect("verify loop"))
        });
        let (b, passes) = (b.0?, b.1);
        eprintln!(
            "round {r}: pass {:.0} us periodic, {:.0} us on demand; connect p50/p99 {:.1}/{:.1} us quiet, {:.1}/{:.1} us during {passes} passes",
            periodic[r],
            full[r],
            q.0 / 1e3,
            q.1 / 1e3,
            b.0 / 1e3,
            b.1 / 1e3
        );
        quiet.push(q);
        busy.push(b);
    }
    let st = agent.status();
    anyhow::ensure!(st["verification"]["findings_total"] == 0, "a finding while benchmarking: {}", st["verification"]);
    agent.stop()?;
    let m = |v: &[(f64, f64)], k: usize| median(&mut v.iter().map(|p| if k == 0 { p.0 } else { p.1 }).collect::<Vec<_>>());
    let ratio =
        |k: usize| median(&mut quiet.iter().zip(&busy).map(|(q, b)| if k == 0 { b.0 / q.0 } else { b.1 / q.1 }).collect::<Vec<_>>());
    println!("\nmedians of {rounds} rounds:");
    println!("  verification pass, periodic (queries, tables, processes, stat): {:>8.0} us", median(&mut periodic));
    println!("  verification pass, on demand (+ blake3 of the binary, audit log): {:>8.0} us", median(&mut full));
    println!(
        "  agent-process connect() p50: quiet {:.2} us, passes back to back {:.2} us, ratio {:.3}",
        m(&quiet, 0) / 1e3,
        m(&busy, 0) / 1e3,
        ratio(0)
    );
    println!(
        "  agent-process connect() p99: quiet {:.2} us, passes back to back {:.2} us, ratio {:.3}",
        m(&quiet, 1) / 1e3,
        m(&busy, 1) / 1e3,
        ratio(1)
    );
    Ok(())
}
