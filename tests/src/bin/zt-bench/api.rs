//! `zt-bench api`: request latency of the remote API over mutual TLS,
//! side by side in each round with the local control socket (one
//! connection per request, as the CLI makes them): `GET /v1/status` on a
//! kept-alive connection, the same on a new connection each time (TCP +
//! TLS 1.3 handshake with a client certificate included), and
//! `PUT /v1/policy` (a 100-rule policy, two versions in turn so every push
//! compiles, installs and records one) on a kept-alive connection. Every
//! call is also an audit record (signed into the log).
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Instant,
};

use anyhow::Context as _;
use zt_tests::{Agent, TestCgroup, agent_bin, mtls};

use super::{median, net_policy, percentile};

/// Microseconds of each of `n` calls of `f`.
fn timed(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f().map(|()| t.elapsed().as_secs_f64() * 1e6)
        })
        .collect()
}

fn local_status(socket: &Path) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(b"{\"request\":\"status\"}\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    anyhow::ensure!(out.starts_with("{\"ok\""), "{out}");
    Ok(())
}

fn ok(r: (u16, String)) -> anyhow::Result<()> {
    anyhow::ensure!(r.0 == 200, "HTTP {}: {}", r.0, r.1);
    Ok(())
}

pub fn bench(rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    let dir = zt_tests::tempdir("bench-api")?;
    let dir = dir.path();
    mtls::certificates(dir);
    let config = dir.join("config.yaml");
    std::fs::write(&config, mtls::api_config(dir))?;
    let cg = TestCgroup::new(&format!("/zt-bench-api-{}/agent", std::process::id()))?;
    println!("zt-agent {} — remote API benchmark ({rounds} rounds)", agent_bin().display());
    let agent = Agent::start("bench-api", &net_policy(&cg.rel, 1, 1), &["--config", config.to_str().unwrap()])?;
    let addr = agent.status()["api"]["listen"].as_str().context("api.listen")?.trim_start_matches("https://").to_string();
    let policies = [net_policy(&cg.rel, 100, 1), net_policy(&cg.rel, 100, 2)];
    let mut client = mtls::Client::connect(dir, "deployer", &addr)?;
    let (n, pushes) = (300, 40);
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> =
        ["local socket status", "mTLS status, kept alive", "mTLS status, new connection", "mTLS policy push, kept alive"]
            .into_iter()
            .map(|name| (name, Vec::new(), Vec::new()))
            .collect();
    for r in 0..rounds {
        let mut push = 0;
        let samples = [
            timed(n, || local_status(&agent.socket))?,
            timed(n, || ok(client.call("GET", "/v1/status", "")?))?,
            timed(n / 3, || ok(mtls::Client::connect(dir, "deployer", &addr)?.call("GET", "/v1/status", "")?))?,
            timed(pushes, || {
                push += 1;
                ok(client.call("PUT", "/v1/policy?name=bench.yaml", &policies[push % 2])?)
            })?,
        ];
        let mut line = format!("round {r}:");
        for (row, mut s) in rows.iter_mut().zip(samples) {
            let (p50, p99) = (percentile(&mut s, 0.5), percentile(&mut s, 0.99));
            line.push_str(&format!(" {} {p50:.0}/{p99:.0} us;", row.0));
            row.1.push(p50);
            row.2.push(p99);
        }
        eprintln!("{line}");
    }
    let st = agent.status();
    agent.stop()?;
    println!("\nmedians of {rounds} rounds (p50 / p99, ratio of p50 to the local socket's):");
    let local = median(&mut rows[0].1.clone());
    for (name, p50, p99) in &mut rows {
        let m = median(p50);
        println!("  {name:<32} {m:>8.0} us / {:>8.0} us   x{:.2}", median(p99), m / local);
    }
    println!("  calls recorded: {} allowed, {} refused (each an audit record)", st["api"]["allowed"], st["api"]["refused"]);
    Ok(())
}
