//! The `zt-agent` binary: CLI parsing and dispatch; the work is in the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use zt_agent::{
    bpf::{loader::ArgvCapture, probe},
    control,
    pipeline::output::Show,
    policy, run,
};

#[derive(Parser)]
#[command(name = "zt-agent", version, about = "Zero-trust host enforcement agent for AI-agent workloads (eBPF)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs, enforce the host policy, stream attributed events (foreground).
    Run {
        /// Policy file or directory (YAML, `kind: HostPolicy`); repeat to compose
        /// several. Watched for changes (inotify) and reloaded on SIGHUP.
        /// Default: the embedded policy.
        #[arg(long, value_name = "PATH")]
        policy: Vec<PathBuf>,
        /// Where the policy history (for `policy history|rollback`) is kept.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/zt-agent")]
        state_dir: PathBuf,
        /// A node label visible to Rego conditions as input.node.labels (repeatable).
        #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = parse_label)]
        node_labels: Vec<(String, String)>,
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
    /// Validate policy files (composed into one bundle): exit 0 when valid,
    /// else every error as `file:line:col: message` and exit 1. Warnings go
    /// to stderr and do not fail the check.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The decision for one access, from the compiled form the kernel uses.
    Explain {
        /// Policy files or directories.
        #[arg(long, required = true, value_name = "PATH")]
        policy: Vec<PathBuf>,
        #[arg(long)]
        identity: String,
        /// ADDR:PORT[/tcp|/udp], IPv6 as [ADDR]:PORT.
        #[arg(long, value_name = "DEST", group = "what")]
        connect: Option<String>,
        #[arg(long, value_name = "PATH", group = "what")]
        open: Option<String>,
        #[arg(long, value_enum, default_value_t = OpenMode::Read, requires = "open")]
        mode: OpenMode,
        #[arg(long, value_name = "PATH", group = "what")]
        exec: Option<String>,
        /// Evaluate rule conditions (time windows, Rego) now instead of
        /// treating every rule as active.
        #[arg(long)]
        conditions: bool,
        #[arg(long)]
        json: bool,
    },
    /// What changes from OLD to NEW, rule by rule and as map entries.
    Diff { old: PathBuf, new: PathBuf },
    /// Policy versions applied by the running agent.
    History {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-apply an earlier version (default: the one before the current).
    Rollback {
        version: Option<u64>,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Make the running agent re-read its policy files now.
    Reload {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OpenMode {
    Read,
    Write,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
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
        Command::Run { policy, state_dir, node_labels, events, show, observe_all_connects, ringbuf_size, poll_ms, socket, demo, argv_capture } => {
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
                state_dir: Some(state_dir),
                node_labels: node_labels.into_iter().collect(),
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
            let v = client(control::request(&socket, "status"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_status(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => policy_command(command),
    }
}

fn client<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn load(paths: &[PathBuf]) -> Result<policy::Policy, ExitCode> {
    match policy::Bundle::read(paths).and_then(|b| b.parse()) {
        Ok(p) => Ok(p),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(1))
        }
    }
}

fn policy_command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { paths } => {
            let p = match load(&paths) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            for w in &p.warnings {
                eprintln!("warning: {w}");
            }
            // Capacity limits are part of validity.
            let ids = policy::IdRegistry::for_policy(&p)?;
            if let Err(e) = policy::compile::compile(&p, &ids, 0, &vec![true; p.rules.len()]) {
                eprintln!("{}: {e}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
                return Ok(ExitCode::from(1));
            }
            println!(
                "ok: {} identities, {} rules, trust domain {} ({} warnings)",
                p.identities.len(),
                p.rules.len(),
                p.trust_domain,
                p.warnings.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Explain { policy: paths, identity, connect, open, mode, exec, conditions, json } => {
            let p = match load(&paths) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let query = match (connect, open, exec) {
                (Some(c), _, _) => policy::Query::parse_connect(&c).map_err(anyhow::Error::msg)?,
                (_, Some(path), _) => policy::Query::Open { path, write: mode == OpenMode::Write },
                (_, _, Some(path)) => policy::Query::Exec { path },
                _ => anyhow::bail!("give one of --connect, --open, --exec"),
            };
            let active = if conditions {
                policy::conditions::evaluate(&p, &policy::conditions::Inputs::current(Default::default())).0
            } else {
                vec![true; p.rules.len()]
            };
            let e = policy::explain(&p, &identity, &query, &active).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("{} ({}) for {} ({})", e.decision, e.verdict_action, e.identity, e.spiffe_id);
                println!("decided by {}", e.reason);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Diff { old, new } => {
            let (a, b) = match (load(std::slice::from_ref(&old)), load(std::slice::from_ref(&new))) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(c), _) | (_, Err(c)) => return Ok(c),
            };
            let lines = policy::diff(&a, &b).map_err(anyhow::Error::msg)?;
            if lines.is_empty() {
                println!("no changes");
            }
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::History { socket, json } => {
            let v = client(control::request(&socket, "history"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for h in v.as_array().into_iter().flatten() {
                    println!(
                        "{}v{:<4} {}  blake3:{}  {}  [{}]",
                        if h["in_force"] == true { "* " } else { "  " },
                        h["version"],
                        h["time"].as_str().unwrap_or(""),
                        &h["digest"].as_str().unwrap_or("")[..16.min(h["digest"].as_str().unwrap_or("").len())],
                        h["source"].as_str().unwrap_or(""),
                        h["files"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Rollback { version, socket } => {
            let req = match version {
                Some(v) => format!("rollback {v}"),
                None => "rollback".into(),
            };
            let v = client(control::request(&socket, &req))?;
            println!("rolled back: now v{} blake3:{} (generation {})", v["version"], v["digest"].as_str().unwrap_or(""), v["generation"]);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Reload { socket } => {
            let v = client(control::request(&socket, "reload"))?;
            println!("policy v{} blake3:{} in force (generation {})", v["version"], v["digest"].as_str().unwrap_or(""), v["generation"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render_status(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let get = |k: &str| v.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).unwrap_or_default();
    s.push_str(&format!("zt-agent {} (pid {}), running since {}\n", get("version"), get("pid"), get("started")));
    let pol = &v["policy"];
    let files: Vec<&str> = pol["files"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
    s.push_str(&format!(
        "policy v{} {} blake3:{} (generation {}, trust domain {}) from {}\n",
        pol["version"],
        pol["name"].as_str().unwrap_or(""),
        pol["digest"].as_str().unwrap_or(""),
        pol["generation"],
        pol["trust_domain"].as_str().unwrap_or(""),
        files.join(", ")
    ));
    s.push_str(&format!("eBPF object blake3:{}\n\nidentities:\n", get("object_blake3")));
    for i in pol["identities"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {} {}\n", i[0].as_str().unwrap_or(""), i[1].as_str().unwrap_or("")));
    }
    s.push_str("\nenforcement paths:\n");
    for p in v["paths"].as_array().into_iter().flatten() {
        s.push_str(&format!("  {}: {}\n", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")));
    }
    s.push_str("\negress decisions (since start):\n");
    for d in v["decisions"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {}: {} allowed, {} denied, {} audited (would deny)\n",
            d["identity"].as_str().unwrap_or(""),
            d["allowed"],
            d["denied"],
            d["audited"]
        ));
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
