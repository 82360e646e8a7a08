//! The local control API: a Unix socket (mode 0600, root only) that answers
//! one request per connection with one JSON document.
//!
//! Requests (one line): `status`. Later issues add policy history/rollback.
use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::{bpf::loader::HookStatus, pipeline::Stats};

pub const DEFAULT_SOCKET: &str = "/run/zt-agent/control.sock";

/// What `status` reports besides the live counters.
#[derive(Debug, Clone, Serialize)]
pub struct StaticInfo {
    pub version: &'static str,
    pub pid: u32,
    pub started: String,
    pub object_blake3: String,
    pub policy_name: String,
    pub policy_source: String,
    pub policy_blake3: String,
    pub trust_domain: String,
    pub identities: Vec<(String, String)>,
    pub hooks: Vec<HookStatus>,
    pub paths: Vec<(String, String)>,
    pub cgroup2: String,
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    #[serde(flatten)]
    info: &'a StaticInfo,
    counters: crate::pipeline::StatsSnapshot,
}

/// Serves until `stop` turns true; removes the socket file on exit.
pub async fn serve(path: &Path, info: Arc<StaticInfo>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
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
                let (info, stats) = (info.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &info, &stats).await {
                        tracing::debug!("control connection: {e:#}");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn answer(stream: UnixStream, info: &StaticInfo, stats: &Stats) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&StatusDoc { info, counters: stats.snapshot() })?,
        other => serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    Ok(())
}

/// Client side: sends one request, returns the JSON reply.
pub async fn request(path: &Path, req: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {} (is `zt-agent run` running?)", path.display()))?;
    s.write_all(format!("{req}\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let v: serde_json::Value = serde_json::from_str(&buf).context("malformed reply")?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("agent answered: {e}");
    }
    Ok(v)
}
