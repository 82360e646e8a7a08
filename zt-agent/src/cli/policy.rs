//! `zt-agent policy ...`: check, explain and diff policy files; history,
//! rollback and reload on the running agent.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use zt_agent::{
    control::{
        self,
        protocol::{Reply, Request},
    },
    manager::Outcome,
    policy,
};

use super::client;

#[derive(Subcommand)]
pub enum PolicyCommand {
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
        /// The running agent asked which enforcement path carries file and
        /// exec decisions on this host (BPF LSM or its fallbacks).
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
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
pub enum OpenMode {
    Read,
    Write,
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

pub fn command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { paths } => check(&paths),
        PolicyCommand::Explain { policy: paths, identity, connect, open, mode, exec, conditions, json, socket } => {
            let query = match (connect, open, exec) {
                (Some(c), _, _) => policy::Query::parse_connect(&c)?,
                (_, Some(path), _) => policy::Query::Open { path, write: mode == OpenMode::Write },
                (_, _, Some(path)) => policy::Query::Exec { path },
                _ => anyhow::bail!("give one of --connect, --open, --exec"),
            };
            explain(&paths, &identity, &query, conditions, json, &socket)
        }
        PolicyCommand::Diff { old, new } => {
            let (a, b) = match (load(std::slice::from_ref(&old)), load(std::slice::from_ref(&new))) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(c), _) | (_, Err(c)) => return Ok(c),
            };
            let lines = policy::diff(&a, &b)?;
            if lines.is_empty() {
                println!("no changes");
            }
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::History { socket, json } => {
            let Reply::History(entries) = client(control::request(&socket, &Request::History))? else {
                anyhow::bail!("unexpected reply to history")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(ExitCode::SUCCESS);
            }
            for h in &entries {
                println!(
                    "{}v{:<4} {}  blake3:{}  {}  [{}]",
                    if h.in_force { "* " } else { "  " },
                    h.version,
                    h.time,
                    &h.digest[..16.min(h.digest.len())],
                    h.source,
                    h.files.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Rollback { version, socket } => {
            let o = policy_reply(client(control::request(&socket, &Request::Rollback { version }))?)?;
            println!("rolled back: now v{} blake3:{} (generation {})", o.version, o.digest, o.generation);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Reload { socket } => {
            let o = policy_reply(client(control::request(&socket, &Request::Reload))?)?;
            println!("policy v{} blake3:{} in force (generation {})", o.version, o.digest, o.generation);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy_reply(reply: Reply) -> anyhow::Result<Outcome> {
    match reply {
        Reply::Policy(o) => Ok(o),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// Parse, validate, and compile (capacity limits are part of validity).
fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let p = match load(paths) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    // Conditions are tried on this host's inputs now: one over its time
    // budget is rejected here as the agent would reject it at load.
    let ev = policy::conditions::evaluate(&p, &policy::conditions::Inputs::current(Default::default()));
    for d in ev.errors() {
        eprintln!("warning: {d}");
    }
    let over = ev.over_budget();
    if !over.is_empty() {
        eprintln!("{}", policy::PolicyErrors(over));
        return Ok(ExitCode::from(1));
    }
    // Capacity errors are invalid policies too (exit 1), like parse errors.
    if let Err(e) = policy::IdRegistry::for_policy(&p).and_then(|ids| policy::compile::compile(&p, &ids, 0, &vec![true; p.rules.len()])) {
        // The error names the file, line and column of the identity or rule.
        eprintln!("{e}");
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

/// What carries `query`'s kind of decision on this host, as the running
/// agent says (its `status` enforcement paths), or why that is not known.
fn enforcement(query: &policy::Query, socket: &std::path::Path) -> Option<String> {
    let kind = match query {
        policy::Query::Open { .. } => "file rules",
        policy::Query::Exec { .. } => "exec rules",
        _ => return None,
    };
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(2), control::request(socket, &Request::Status)).await });
    Some(match asked {
        Ok(Ok(Reply::Status(doc))) => match doc.info.paths.iter().find(|(w, _)| w == kind) {
            Some((_, line)) => line.clone(),
            None => format!("unknown: the agent at {} names no {kind} path", socket.display()),
        },
        _ => format!("unknown: no agent answers at {} (`zt-agent probe` says what this kernel can run)", socket.display()),
    })
}

fn explain(
    paths: &[PathBuf],
    identity: &str,
    query: &policy::Query,
    conditions: bool,
    json: bool,
    socket: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let p = match load(paths) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let ev = conditions.then(|| policy::conditions::evaluate(&p, &policy::conditions::Inputs::current(Default::default())));
    let active = ev.as_ref().map_or_else(|| vec![true; p.rules.len()], |ev| ev.active());
    let e = policy::explain(&p, identity, query, &active, &policy::objects::HostLookup)?;
    // The identity's rules that have conditions, and their state now.
    let states: Vec<&policy::conditions::RuleState> = ev
        .iter()
        .flat_map(|ev| ev.rules.iter().zip(&p.rules))
        .filter(|(s, r)| *r.identity == *identity && s.why != policy::conditions::Why::Unconditional)
        .map(|(s, _)| s)
        .collect();
    if json {
        let mut v = serde_json::to_value(&e)?;
        if conditions {
            v["conditions"] = serde_json::to_value(&states)?;
        }
        if let Some(how) = enforcement(query, socket) {
            v["enforcement"] = how.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{} ({}) for {} ({})", e.decision, e.verdict_action, e.identity, e.spiffe_id);
        println!("decided by {}", e.reason);
        if let Some(a) = &e.anomaly {
            println!("anomaly detection: {a}");
        }
        for s in states {
            println!("rule {:?}: {}", s.rule, s.describe());
        }
        if let Some(how) = enforcement(query, socket) {
            println!("enforced on this host by: {how}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
