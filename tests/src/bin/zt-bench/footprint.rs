//! `zt-bench footprint`: what running the agent costs a node, side by side
//! in each round: the embedded default policy, 10,000 egress rules over
//! 1,000 identities, and the same with a 4 MiB telemetry ring (the default
//! is 8 MiB). Per start: time from spawn to `/readyz` 200 (programs loaded
//! and attached, policy in the maps, audit log open), then after 3 s of
//! settling the resident memory, VmRSS and PSS (`smaps_rollup`: a ring
//! buffer's data pages are mapped twice, back to back, so VmRSS counts
//! them twice and PSS once), and the CPU used over 10 s of idling. Then the
//! container image's size (`deploy/build-image.sh` with the binary
//! measured; podman).
use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use zt_tests::agent_bin;

use super::{big_policy, median};

struct Sample {
    ready_ms: f64,
    rss_mib: f64,
    pss_mib: f64,
    cpu_percent: f64,
}

/// `/readyz`'s status code, if the endpoint answers.
fn readyz(addr: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').context("/proc/pid/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// The `key:` line of a /proc file, in KiB.
fn proc_kib(path: &str, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let line = text.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in {path}"))?;
    Ok(line.split_whitespace().nth(1).with_context(|| format!("{key} value"))?.parse()?)
}

fn measure(policy: Option<&str>, extra: &[&str]) -> anyhow::Result<Sample> {
    let tmp = zt_tests::tempdir("footprint")?;
    let dir = tmp.path();
    let port = zt_tests::siem::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--no-pin", "--metrics-addr", &addr])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .arg("--audit-key")
        .arg(dir.join("key"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(text) = policy {
        std::fs::write(dir.join("policy.yaml"), text)?;
        cmd.arg("--policy").arg(dir.join("policy.yaml"));
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let ready = loop {
        if readyz(&addr) == Some(200) {
            break started.elapsed();
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "the agent exited before it was ready");
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "not ready within 120 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id();
    let rss = proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")?;
    let pss = proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")?;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    std::thread::sleep(Duration::from_secs(10));
    let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    child.wait()?;
    Ok(Sample { ready_ms: ready.as_secs_f64() * 1e3, rss_mib: rss as f64 / 1024.0, pss_mib: pss as f64 / 1024.0, cpu_percent: cpu })
}

/// The image's size in bytes, built from the binary measured; None without podman.
fn image_size() -> anyhow::Result<Option<u64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-image.sh");
    if Command::new("podman").arg("--version").output().is_err() {
        return Ok(None);
    }
    let tag = format!("localhost/zt-agent:{}", zt_tests::unique("footprint"));
    let o = Command::new(script).arg(agent_bin()).arg(&tag).output()?;
    anyhow::ensure!(o.status.success(), "build-image.sh: {}", String::from_utf8_lossy(&o.stderr));
    let size = Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]).output()?;
    let _ = Command::new("podman").args(["rmi", "--force", &tag]).output();
    Ok(Some(String::from_utf8(size.stdout)?.trim().parse()?))
}

pub fn bench(rounds: usize) -> anyhow::Result<()> {
    println!("zt-agent {} — footprint benchmark ({rounds} rounds)", agent_bin().display());
    let big = big_policy(10_000, 1_000, "/zt-bench-footprint");
    let ring = (zt_common::maps::EVENTS_DEFAULT_BYTES / 2).to_string();
    let scenarios: [(&str, Option<&str>, &[&str]); 3] = [
        ("embedded default policy", None, &[]),
        ("10,000 egress rules, 1,000 identities", Some(&big), &[]),
        ("the same, --ringbuf-size 4 MiB", Some(&big), &["--ringbuf-size", &ring]),
    ];
    let mut samples: Vec<Vec<Sample>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (name, policy, extra)) in scenarios.iter().enumerate() {
            let s = measure(*policy, extra)?;
            println!(
                "  round {round}: {name}: ready {:.0} ms, RSS {:.1} MiB, PSS {:.1} MiB, idle CPU {:.2}%",
                s.ready_ms, s.rss_mib, s.pss_mib, s.cpu_percent
            );
            samples[i].push(s);
        }
    }
    println!("\nmedians of {rounds} rounds:");
    let mut med = Vec::new();
    for ((name, _, _), s) in scenarios.iter().zip(&samples) {
        let m = |f: fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
        let (ready, rss, pss, cpu) = (m(|s| s.ready_ms), m(|s| s.rss_mib), m(|s| s.pss_mib), m(|s| s.cpu_percent));
        println!("  {name:<40} ready {ready:>6.0} ms   RSS {rss:>6.1} MiB   PSS {pss:>6.1} MiB   idle CPU {cpu:>5.2}% of one core");
        med.push((ready, rss));
    }
    println!("  10k rules / default: ready x{:.2}, RSS x{:.2}", med[1].0 / med[0].0, med[1].1 / med[0].1);
    match image_size()? {
        Some(b) => println!("  container image (deploy/Containerfile): {:.1} MiB", b as f64 / (1 << 20) as f64),
        None => println!("  container image: podman not installed, not measured"),
    }
    Ok(())
}
