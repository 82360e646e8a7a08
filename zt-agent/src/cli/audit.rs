//! `zt-agent audit ...`: verify, prove, read and rotate keys of the signed log.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Subcommand;
use zt_agent::{
    audit::{self, inspect, log::MAX_KEY_OVERLAP, verify},
    control::{
        self,
        protocol::{Reply, Request},
    },
};

use super::client;

#[derive(Subcommand)]
pub enum AuditCommand {
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
        /// At most 30 days (both keys sign for that long at most).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_overlap)]
        overlap: Duration,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// `--overlap`: a duration of at most [`MAX_KEY_OVERLAP`].
fn parse_overlap(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_KEY_OVERLAP {
        return Err(format!("at most {} (both keys sign for the whole overlap)", humantime::format_duration(MAX_KEY_OVERLAP)));
    }
    Ok(d)
}

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

pub fn command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { dir, vkey, trusted_checkpoint, json } => verify_log(&dir, &vkey, &trusted_checkpoint, json),
        AuditCommand::Proof { index, dir, json } => proof(&dir, index, json),
        AuditCommand::Consistency { from, dir, vkey, json } => consistency(&dir, &from, &vkey, json),
        AuditCommand::Show { dir, from, kind, json } => {
            let l = inspect::load(&dir)?;
            let wanted = |idx: u64, r: &[u8]| {
                idx >= from && kind.as_deref().is_none_or(|k| audit::record::Header::parse(r).is_ok_and(|h| h.kind == k))
            };
            let shown = (l.base..).zip(&l.records).filter(|(idx, r)| wanted(*idx, r)).map(|(_, r)| r.as_slice());
            print_records(shown, json, l.bad_frame.as_ref())
        }
        AuditCommand::Tail { dir, lines, json } => {
            let l = inspect::load(&dir)?;
            let last = l.records[l.records.len().saturating_sub(lines)..].iter().map(Vec::as_slice);
            print_records(last, json, l.bad_frame.as_ref())
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
            let reply = client(control::request(&socket, &Request::RotateAuditKey { overlap_secs: overlap.as_secs() }))?;
            let Reply::KeyRotated(k) = reply else { anyhow::bail!("unexpected reply {reply:?}") };
            println!("new audit key {} signs alongside the old one until {}", k.new_key, k.overlap_until);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify_log(dir: &std::path::Path, vkey: &[String], trusted_checkpoint: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let keys = verifier_keys(vkey)?;
    let trusted = trusted_checkpoint
        .iter()
        .map(|p| Ok((p.display().to_string(), std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match verify::verify_dir(dir, &verify::Options { keys, trusted }) {
        Ok(r) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"intact": true, "origin": r.origin, "first_index": r.first_index, "records": r.records, "checkpoints": r.checkpoints, "signed_size": r.latest.as_ref().map(|c| c.size), "unsigned": r.unsigned, "keys_from_log_dir": r.keys_from_log_dir, "trusted_keys": r.trusted_keys})
                );
            } else {
                print!("{}", verify::render(dir, &r));
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

fn proof(dir: &std::path::Path, index: u64, json: bool) -> anyhow::Result<ExitCode> {
    let p = inspect::inclusion(dir, index)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!("record {} is in the tree of size {} (root {}), proof verified:", p.index, p.tree_size, p.root);
        println!("leaf hash {}", p.leaf_hash);
        for h in &p.proof {
            println!("  {h}");
        }
        println!("record: {}\ncheckpoint:\n{}", p.record, p.checkpoint);
    }
    Ok(ExitCode::SUCCESS)
}

fn consistency(dir: &std::path::Path, from: &std::path::Path, vkey: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let keys = if vkey.is_empty() { audit::keys::read_verifier_keys(&audit::keys::verifier_keys_path(dir))? } else { verifier_keys(vkey)? };
    let note = std::fs::read_to_string(from).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    let p = inspect::consistency(dir, &note, &keys)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!("size {} (root {}) extends size {} (root {}), proof verified:", p.new_size, p.new_root, p.old_size, p.old_root);
        for h in &p.proof {
            println!("  {h}");
        }
        println!("checkpoint:\n{}", p.checkpoint);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints records one per line (the canonical JSON with `--json`). A
/// reader that goes away (`| head`) ends the output quietly; a bad frame
/// that ended the log early is reported after the records, exit status 1.
fn print_records<'a>(
    records: impl Iterator<Item = &'a [u8]>,
    json: bool,
    bad: Option<&audit::segment::BadFrame>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = records
        .map(|r| if json { String::from_utf8_lossy(r).into_owned() } else { audit::inspect::summary(r) })
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    if let Some(b) = bad {
        eprintln!(
            "zt-agent: the log ends early at record {} ({} at byte {}): {}; `zt-agent audit verify` says whether that is a torn tail or damage",
            b.index,
            b.path.display(),
            b.offset,
            b.reason
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
