//! The local control API: a Unix socket (mode 0600, root only) that answers
//! one request per connection with one JSON document.
//!
//! Requests (one line): `status`, `reload`, `history`, `rollback [VERSION]`,
//! `audit-rotate-key SECONDS`.
use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    bpf::loader::HookStatus,
    manager::{InForce, Request},
    pipeline::Stats,
};

pub const DEFAULT_SOCKET: &str = "/run/zt-agent/control.sock";

/// What `status` reports besides the live counters and the policy in force.
#[derive(Debug, Clone, Serialize)]
pub struct StaticInfo {
    pub version: &'static str,
    pub pid: u32,
    pub started: String,
    pub object_blake3: String,
    pub hooks: Vec<HookStatus>,
    pub paths: Vec<(String, String)>,
    pub cgroup2: String,
}

/// Everything the control socket answers from.
#[derive(Clone)]
pub struct State {
    pub info: Arc<StaticInfo>,
    pub stats: Arc<Stats>,
    pub in_force: Arc<std::sync::RwLock<InForce>>,
    pub requests: mpsc::Sender<Request>,
    pub audit: Option<(crate::audit::writer::Sink, Arc<std::sync::Mutex<crate::audit::writer::Status>>)>,
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    #[serde(flatten)]
    info: &'a StaticInfo,
    policy: InForce,
    counters: crate::pipeline::StatsSnapshot,
    /// Egress decisions per identity since start.
    decisions: Vec<Decisions>,
    audit: Option<crate::audit::writer::Status>,
}

#[derive(Serialize)]
struct Decisions {
    identity: String,
    allowed: u64,
    denied: u64,
    audited: u64,
}

/// Serves until `stop` turns true; removes the socket file on exit.
pub async fn serve(path: &Path, state: State, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &state).await {
                        tracing::debug!("control connection: {e:#}");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn answer(stream: UnixStream, state: &State) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let error = |e: String| serde_json::json!({ "error": e }).to_string();
    let reply = match words.as_slice() {
        ["status"] => {
            let policy = state.in_force.read().expect("poisoned").clone();
            let decisions = state
                .stats
                .decisions
                .lock()
                .expect("poisoned")
                .iter()
                .map(|(id, c)| Decisions {
                    identity: policy.ids.get(id).cloned().unwrap_or_else(|| format!("#{id}")),
                    allowed: c.allowed,
                    denied: c.denied,
                    audited: c.audited,
                })
                .collect();
            let audit = state.audit.as_ref().map(|(_, s)| s.lock().expect("poisoned").clone());
            serde_json::to_string(&StatusDoc { info: &state.info, policy, counters: state.stats.snapshot(), decisions, audit })?
        }
        ["reload"] => {
            let (tx, rx) = oneshot::channel();
            state.requests.send(Request::Reload { source: "control".into(), reply: tx }).await?;
            match rx.await? {
                Ok(o) => serde_json::to_string(&o)?,
                Err(e) => error(e),
            }
        }
        ["rollback", rest @ ..] => {
            let version = match rest {
                [] => None,
                [v] => Some(v.trim_start_matches('v').parse::<u64>().map_err(|_| anyhow::anyhow!("bad version {v:?}"))?),
                _ => anyhow::bail!("usage: rollback [VERSION]"),
            };
            let (tx, rx) = oneshot::channel();
            state.requests.send(Request::Rollback { version, reply: tx }).await?;
            match rx.await? {
                Ok(o) => serde_json::to_string(&o)?,
                Err(e) => error(e),
            }
        }
        ["history"] => {
            let (tx, rx) = oneshot::channel();
            state.requests.send(Request::History { reply: tx }).await?;
            serde_json::to_string(&rx.await?)?
        }
        ["audit-rotate-key", secs] => {
            let secs: u64 = secs.parse().map_err(|_| anyhow::anyhow!("bad overlap {secs:?}"))?;
            match &state.audit {
                None => error("no audit log".into()),
                Some((sink, _)) => match sink.rotate_key(std::time::Duration::from_secs(secs)).await {
                    Ok((key, until)) => serde_json::json!({"new_key": key, "overlap_until": until}).to_string(),
                    Err(e) => error(e),
                },
            }
        }
        _ => error(format!("unknown request {:?}", line.trim())),
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    Ok(())
}

/// Client side: sends one request, returns the JSON reply.
pub async fn request(path: &Path, req: &str) -> anyhow::Result<serde_json::Value> {
    let mut s =
        UnixStream::connect(path).await.with_context(|| format!("connecting to {} (is `zt-agent run` running?)", path.display()))?;
    s.write_all(format!("{req}\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let v: serde_json::Value = serde_json::from_str(&buf).context("malformed reply")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("agent answered:\n{e}");
    }
    Ok(v)
}
