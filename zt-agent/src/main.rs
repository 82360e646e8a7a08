//! The `zt-agent` binary: CLI parsing and dispatch; the work is in the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use zt_agent::{
    bpf::{loader::ArgvCapture, probe},
    control, identity,
    pipeline::output::Show,
    run,
};

#[derive(Parser)]
#[command(name = "zt-agent", version, about = "Zero-trust host enforcement agent for AI-agent workloads (eBPF)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs and stream attributed events (foreground).
    Run {
        /// Identity/policy file (YAML, `kind: HostPolicy`); default: the embedded policy.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Append JSON-lines events to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Which events to output.
        #[arg(long, value_enum, default_value_t = Show::Attributed)]
        show: Show,
        /// Also report connects of processes without an identity (costs more per connect).
        #[arg(long)]
        observe_all_connects: bool,
        /// Ring buffer size in bytes (power of two).
        #[arg(long, value_name = "BYTES", default_value_t = zt_common::maps::EVENTS_DEFAULT_BYTES)]
        ringbuf_size: u32,
        /// How often the consumer drains the ring buffer (the kernel submits without wakeups).
        #[arg(long, value_name = "MS", default_value_t = 10)]
        poll_ms: u64,
        /// Control socket path (for `zt-agent status`).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Start a demo workload in the cgroup /zt-agents/demo (what the default policy attributes).
        #[arg(long)]
        demo: bool,
        /// Where exec argv comes from: `kernel` (from the new image at exec, via
        /// BTF offsets; falls back to syscall tracepoints without BTF), `syscalls`
        /// (force the syscall-tracepoint path, which slows every syscall a little),
        /// or `proc` (read from /proc after the exec: misses processes that exit at once).
        #[arg(long, value_enum, default_value_t = ArgvCapture::Kernel)]
        argv_capture: ArgvCapture,
    },
    /// Report which eBPF features really work on this kernel (loads tiny programs).
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// Counters, hooks and enforcement paths of the running agent.
    Status {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files: exit 0 when valid, else `file:line:col: message` and exit 1.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zt-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { policy, events, show, observe_all_connects, ringbuf_size, poll_ms, socket, demo, argv_capture } => {
            let opts = run::RunOptions {
                policy,
                events,
                show,
                observe_all_connects,
                ringbuf_bytes: run::valid_ringbuf_size(ringbuf_size)?,
                poll_interval: Duration::from_millis(poll_ms.max(1)),
                socket,
                demo,
                argv: argv_capture,
            };
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { json } => {
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
        Command::Status { socket, json } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let v = rt.block_on(control::request(&socket, "status"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_status(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Check { paths } } => {
            let mut ok = true;
            for p in &paths {
                match identity::config::load_file(p) {
                    Ok(c) => println!("{}: ok ({} identities, trust domain {})", p.display(), c.identities.len(), c.trust_domain),
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn render_status(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let get = |k: &str| v.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).unwrap_or_default();
    s.push_str(&format!("zt-agent {} (pid {}), running since {}\n", get("version"), get("pid"), get("started")));
    s.push_str(&format!("policy {} from {} blake3:{}\n", get("policy_name"), get("policy_source"), get("policy_blake3")));
    s.push_str(&format!("eBPF object blake3:{}\n\nidentities:\n", get("object_blake3")));
    for i in v["identities"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {} {}\n", i[0].as_str().unwrap_or(""), i[1].as_str().unwrap_or("")));
    }
    s.push_str("\nenforcement paths:\n");
    for p in v["paths"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {}: {}\n", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")));
    }
    s.push_str("\nhooks:\n");
    for h in v["hooks"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {} ({}): {}\n", h["program"].as_str().unwrap_or(""), h["attach_point"].as_str().unwrap_or(""), h["state"].as_str().unwrap_or("")));
    }
    s.push_str("\ncounters:\n");
    if let Some(c) = v["counters"].as_object() {
        for (k, val) in c {
            s.push_str(&format!("  {k}: {val}\n"));
        }
    }
    s
}
