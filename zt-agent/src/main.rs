//! The `zt-agent` binary: CLI parsing and dispatch; the work is in the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use zt_agent::{
    audit,
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
        /// Where the signed audit log is written.
        #[arg(long, value_name = "DIR", env = "ZT_AUDIT_DIR", default_value = audit::log::DEFAULT_DIR)]
        audit_dir: PathBuf,
        /// The audit signing key (Ed25519 PKCS#8): created with mode 0400 if
        /// missing, or a mounted secret (must not be group/other readable).
        #[arg(long, value_name = "FILE", env = "ZT_AUDIT_KEY", default_value = audit::log::DEFAULT_KEY)]
        audit_key: PathBuf,
        /// Audit log origin and key name for a new log (default `zt-agent/<hostname>`).
        #[arg(long, value_name = "NAME", env = "ZT_AUDIT_ORIGIN")]
        audit_origin: Option<String>,
        /// Start a new audit segment file beyond this size.
        #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
        audit_segment_bytes: u64,
        /// Delete the oldest signed segments beyond this total size (recorded in the log).
        #[arg(long, value_name = "BYTES")]
        audit_retain_bytes: Option<u64>,
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
    /// The signed audit log: verify, prove, read, rotate keys.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a whole log: framing, record order, every checkpoint's
    /// signature and root, and outside checkpoints. Exit 0 when intact,
    /// 1 with the first bad record's index and the reason, 2 on usage errors.
    Verify {
        #[arg(default_value = audit::log::DEFAULT_DIR)]
        dir: PathBuf,
        /// Trusted verifier key (`name+keyid+base64`) or a file of them;
        /// repeatable. Without it the log's own verifier-keys file is used,
        /// which does not make the verification independent of this host.
        #[arg(long, value_name = "KEY|FILE")]
        vkey: Vec<String>,
        /// A signed checkpoint kept outside this host (SIEM, witness, an
        /// earlier run); repeatable. Catches truncation, rollback and forks.
        #[arg(long, value_name = "FILE")]
        trusted_checkpoint: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Inclusion proof of record N against the latest checkpoint.
    Proof {
        #[arg(long)]
        index: u64,
        #[arg(long, default_value = audit::log::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Consistency proof from an earlier checkpoint to the latest one.
    Consistency {
        /// The earlier signed checkpoint (a file).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        #[arg(long, default_value = audit::log::DEFAULT_DIR)]
        dir: PathBuf,
        /// Trusted key(s) for the --from checkpoint (default: the log's verifier-keys file).
        #[arg(long, value_name = "KEY|FILE")]
        vkey: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print records (one line each, or the exact canonical JSON with --json).
    Show {
        #[arg(long, default_value = audit::log::DEFAULT_DIR)]
        dir: PathBuf,
        /// First index to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only records of this kind (connect, policy, agent, loss, checkpoint, ...).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the last N records.
    Tail {
        #[arg(long, default_value = audit::log::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print the verifier key of the log's signing key (or create the key).
    Key {
        #[arg(long, env = "ZT_AUDIT_KEY", default_value = audit::log::DEFAULT_KEY)]
        key: PathBuf,
        /// Key name: the log origin (default: `zt-agent/<hostname>`).
        #[arg(long)]
        origin: Option<String>,
    },
    /// Make the running agent rotate its audit key: a new key signs
    /// alongside the old one for the overlap, then replaces it.
    RotateKey {
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        overlap: Duration,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
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
        Command::Run {
            policy,
            state_dir,
            node_labels,
            events,
            show,
            observe_all_connects,
            ringbuf_size,
            poll_ms,
            socket,
            demo,
            argv_capture,
            audit_dir,
            audit_key,
            audit_origin,
            audit_segment_bytes,
            audit_retain_bytes,
        } => {
            let mut audit = audit::log::Config::new(audit_dir, audit_key, audit_origin.unwrap_or_else(audit::log::default_origin));
            audit.segment_bytes = audit_segment_bytes;
            audit.retain_bytes = audit_retain_bytes;
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
                audit,
            };
            match tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run::run(opts)) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if matches!(e.downcast_ref(), Some(audit::log::OpenError::Integrity { .. })) => {
                    eprintln!("zt-agent: AUDIT LOG INTEGRITY VIOLATION: {e:#}");
                    eprintln!(
                        "zt-agent: refusing to start; keep the directory as evidence (move it aside to start a new log) and check it with `zt-agent audit verify`"
                    );
                    Ok(ExitCode::from(AUDIT_VIOLATION_EXIT))
                }
                Err(e) => Err(e),
            }
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
        Command::Audit { command } => audit_command(command),
    }
}

/// Exit status of `run` when the audit log contradicts its signed checkpoint.
const AUDIT_VIOLATION_EXIT: u8 = 3;

/// `--vkey` values: keys, or files of keys.
fn verifier_keys(args: &[String]) -> anyhow::Result<Vec<audit::note::VerifierKey>> {
    let mut out = Vec::new();
    for a in args {
        let p = std::path::Path::new(a);
        if p.is_file() {
            out.extend(audit::keys::read_verifier_keys(p)?);
        } else {
            out.push(audit::note::VerifierKey::parse(a)?);
        }
    }
    Ok(out)
}

fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use audit::{inspect, verify};
    match command {
        AuditCommand::Verify { dir, vkey, trusted_checkpoint, json } => {
            let keys = verifier_keys(&vkey)?;
            let trusted = trusted_checkpoint
                .iter()
                .map(|p| Ok((p.display().to_string(), std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match verify::verify_dir(&dir, &verify::Options { keys, trusted }) {
                Ok(r) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"intact": true, "origin": r.origin, "first_index": r.first_index, "records": r.records, "checkpoints": r.checkpoints, "signed_size": r.latest.as_ref().map(|c| c.size), "unsigned": r.unsigned, "keys_from_log_dir": r.keys_from_log_dir, "trusted_keys": r.trusted_keys})
                        );
                    } else {
                        print!("{}", verify::render(&dir, &r));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    if json {
                        println!("{}", serde_json::json!({"intact": false, "index": f.index, "reason": f.reason}));
                    } else {
                        println!("audit log {}: NOT INTACT: {f}", dir.display());
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Proof { index, dir, json } => {
            let p = inspect::inclusion(&dir, index)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("record {} is in the tree of size {} (root {}), proof verified:", p.index, p.tree_size, p.root);
                println!("leaf hash {}", p.leaf_hash);
                for h in &p.proof {
                    println!("  {h}");
                }
                println!(
                    "record: {}
checkpoint:
{}",
                    p.record, p.checkpoint
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Consistency { from, dir, vkey, json } => {
            let keys = if vkey.is_empty() {
                audit::keys::read_verifier_keys(&audit::keys::verifier_keys_path(&dir))?
            } else {
                verifier_keys(&vkey)?
            };
            let note = std::fs::read_to_string(&from).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
            let p = inspect::consistency(&dir, &note, &keys)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("size {} (root {}) extends size {} (root {}), proof verified:", p.new_size, p.new_root, p.old_size, p.old_root);
                for h in &p.proof {
                    println!("  {h}");
                }
                println!(
                    "checkpoint:
{}",
                    p.checkpoint
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { dir, from, kind, json } => {
            let l = inspect::load(&dir)?;
            for (i, r) in l.records.iter().enumerate() {
                let idx = l.base + i as u64;
                if idx < from || kind.as_deref().is_some_and(|k| audit::record::Header::parse(r).map(|h| h.kind != k).unwrap_or(true)) {
                    continue;
                }
                print_record(r, json);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail { dir, lines, json } => {
            let l = inspect::load(&dir)?;
            for r in &l.records[l.records.len().saturating_sub(lines)..] {
                print_record(r, json);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Key { key, origin } => {
            let origin = origin.unwrap_or_else(audit::log::default_origin);
            let (signer, created) = audit::keys::load_or_create(&key, &origin)?;
            if created {
                eprintln!("created {} (mode 0400)", key.display());
            }
            println!("{}", signer.verifier_key());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::RotateKey { overlap, socket } => {
            let v = client(control::request(&socket, &format!("audit-rotate-key {}", overlap.as_secs())))?;
            println!(
                "new audit key {} signs alongside the old one until {}",
                v["new_key"].as_str().unwrap_or(""),
                v["overlap_until"].as_str().unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_record(r: &[u8], json: bool) {
    if json {
        println!("{}", String::from_utf8_lossy(r));
    } else {
        println!("{}", audit::inspect::summary(r));
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
    let a = &v["audit"];
    if a.is_object() {
        s.push_str(&format!(
            "\naudit log {} (origin {}): {} records, signed size {} root {}, {} write errors\n",
            a["dir"].as_str().unwrap_or(""),
            a["origin"].as_str().unwrap_or(""),
            a["records"],
            a["signed_size"],
            a["signed_root"].as_str().unwrap_or(""),
            a["write_errors"]
        ));
        for k in a["verifier_keys"].as_array().into_iter().flatten() {
            s.push_str(&format!("  verifier key {}\n", k.as_str().unwrap_or("")));
        }
        if let Some(t) = a["rotation_overlap_until"].as_str() {
            s.push_str(&format!("  key rotation: both keys sign until {t}\n"));
        }
        if let Some(e) = a["last_error"].as_str() {
            s.push_str(&format!("  last error: {e}\n"));
        }
    }
    s.push_str("\nhooks:\n");
    for h in v["hooks"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {} ({}): {}\n",
            h["program"].as_str().unwrap_or(""),
            h["attach_point"].as_str().unwrap_or(""),
            h["state"].as_str().unwrap_or("")
        ));
    }
    s.push_str("\ncounters:\n");
    if let Some(c) = v["counters"].as_object() {
        for (k, val) in c {
            s.push_str(&format!("  {k}: {val}\n"));
        }
    }
    s
}
