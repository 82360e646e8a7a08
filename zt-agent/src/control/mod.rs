//! The local control API: a Unix socket (mode 0600, root only) that answers
//! one [`protocol::Request`] per connection with one [`protocol::Response`]
//! (JSON lines). Besides the file mode, each client's credentials
//! (`SO_PEERCRED`) must be root's or the agent's own user, and its process
//! must have no agent identity (the kernel's process table): a socket made
//! reachable by a wrong mode, a passed descriptor, or an identity running
//! as root where no Unix-socket hook refuses its connect, answers no one else.
//!
//! # Layout
//! - [`protocol`]: the request and response types, shared with the CLI.
//! - [`bind`] then [`serve`]: the daemon side; [`State`]: what it answers
//!   from. Connections are tasks of the server: a client that sends
//!   nothing, or does not read its reply, is dropped after
//!   [`READ_TIMEOUT`], and every connection still
//!   open is aborted at stop (each holds the audit queue open, and the
//!   audit log's final checkpoint waits for every holder).
//! - [`request`]: the client side.
use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};

pub mod protocol;

use protocol::{Decisions, Reply, Request, Response, StaticInfo, StatusDoc};

use crate::{
    audit,
    manager::{Command, InForce},
    pipeline::Stats,
};

pub const DEFAULT_SOCKET: &str = "/run/zt-agent/control.sock";

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// How long a client may take to send its request line, and to take its
/// reply.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("connecting to {} (is `zt-agent run` running?)", path.display())]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent")]
    Stream(#[source] std::io::Error),
    #[error("malformed message")]
    Malformed(#[source] serde_json::Error),
    #[error("agent answered:\n{0}")]
    Agent(String),
    #[error("no request within {}", humantime::format_duration(READ_TIMEOUT))]
    Timeout,
    #[error("the client did not take its reply within {}", humantime::format_duration(READ_TIMEOUT))]
    ReplyTimeout,
    #[error("the client went away before its reply; what it asked for was abandoned")]
    ClientGone,
}

/// Everything the control socket answers from.
#[derive(Clone)]
pub struct State {
    pub info: Arc<StaticInfo>,
    pub stats: Arc<Stats>,
    pub in_force: Arc<std::sync::RwLock<InForce>>,
    pub commands: mpsc::Sender<Command>,
    pub audit: Option<audit::writer::Control>,
    pub siem: Vec<Arc<std::sync::Mutex<crate::siem::Status>>>,
    /// The fanotify file-rule fallback's counters, where it runs.
    pub fanotify: Option<Arc<crate::files::Counters>>,
    /// `model record`, where syscall telemetry can run.
    pub recorder: Option<crate::anomaly::record::Recorder>,
    /// The anomaly detector's view of each watched identity.
    pub anomaly: crate::anomaly::live::Board,
    /// The Kubernetes pod watcher, where there is one.
    pub kube: Option<Arc<std::sync::Mutex<crate::kube::client::Status>>>,
    /// Continuous verification (`zt-agent verify`).
    pub verifier: Option<Arc<crate::verify::Verifier>>,
    /// The kernel's process table, for the peer check (a client with an
    /// agent identity is refused); None: not known here (not checked).
    pub processes: Option<Arc<dyn crate::files::Processes + Sync>>,
    /// The remote API, where it is on.
    pub api: Option<crate::api::Monitor>,
}

/// Creates the socket (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use crate::fsutil::at;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(at("binding", path))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(at("chmod 0600", path))?;
    Ok(listener)
}

/// Serves until `stop` turns true, then aborts the connections still open
/// and removes the socket file.
pub async fn serve(listener: UnixListener, path: &Path, state: State, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let answered = match peer_allowed(&stream, state.processes.as_deref()) {
                        Ok(()) => answer(stream, &state).await,
                        Err(why) => refuse(stream, why).await,
                    };
                    if let Err(e) = answered {
                        tracing::debug!("control connection: {}", crate::error::chain(&e));
                    }
                });
            }
        }
    }
    connections.shutdown().await;
    let _ = std::fs::remove_file(path);
}

/// Root, or the user the agent runs as, in a process without an agent
/// identity; anyone else is refused with why.
fn peer_allowed(stream: &UnixStream, processes: Option<&(dyn crate::files::Processes + Sync)>) -> Result<(), String> {
    let cred = stream.peer_cred().map_err(|e| format!("the client's credentials (SO_PEERCRED) cannot be read: {e}"))?;
    let own = nix::unistd::geteuid().as_raw();
    let pid = cred.pid().map_or_else(|| "?".into(), |p| p.to_string());
    if cred.uid() != 0 && cred.uid() != own {
        return Err(format!("the control socket answers root only (SO_PEERCRED: pid {pid}, uid {})", cred.uid()));
    }
    let identity =
        processes.zip(cred.pid()).and_then(|(t, p)| t.get(p as u32)).map(|p| p.identity).filter(|id| *id != zt_common::NO_IDENTITY);
    match identity {
        Some(id) => Err(format!("the control socket answers no agent identity (SO_PEERCRED: pid {pid} has identity #{id})")),
        None => Ok(()),
    }
}

async fn refuse(mut stream: UnixStream, why: String) -> Result<(), ControlError> {
    tracing::warn!("control socket: refused: {why}");
    // Its request read first (and ignored): closing with it unread would
    // reset the connection before the client reads why.
    let mut line = String::new();
    let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST));
    let _ = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let mut text = serde_json::to_string(&Response::Error(why)).map_err(ControlError::Malformed)?;
    text.push('\n');
    tokio::time::timeout(READ_TIMEOUT, stream.write_all(text.as_bytes()))
        .await
        .map_err(|_| ControlError::ReplyTimeout)?
        .map_err(ControlError::Stream)
}

async fn answer(stream: UnixStream, state: &State) -> Result<(), ControlError> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| ControlError::Timeout)?
        .map_err(ControlError::Stream)?;
    let response = match serde_json::from_str::<Request>(&line) {
        // A recording ends when its client goes away (the future dropped:
        // telemetry off, nothing written).
        Ok(req @ Request::Record { .. }) => tokio::select! {
            r = handle(req, state) => r.map_or_else(Response::Error, Response::Ok),
            _ = hangup(&mut reader) => return Err(ControlError::ClientGone),
        },
        Ok(req) => handle(req, state).await.map_or_else(Response::Error, Response::Ok),
        Err(e) => Response::Error(format!("malformed request {:?}: {e}", line.trim())),
    };
    let mut text = serde_json::to_string(&response).map_err(ControlError::Malformed)?;
    text.push('\n');
    tokio::time::timeout(READ_TIMEOUT, w.write_all(text.as_bytes()))
        .await
        .map_err(|_| ControlError::ReplyTimeout)?
        .map_err(ControlError::Stream)
}

/// Resolves when the client has closed its end (or it fails): whatever it
/// sent after its request is ignored.
async fn hangup(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 64];
    while let Ok(1..) = reader.read(&mut buf).await {}
}

/// Sends a command to the policy manager and waits for its reply.
pub(crate) async fn ask<T>(commands: &mpsc::Sender<Command>, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, String> {
    const GONE: &str = "the agent is shutting down";
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx)).await.map_err(|_| GONE.to_string())?;
    rx.await.map_err(|_| GONE.to_string())
}

/// A manager reply as the socket sends it: errors with every cause.
fn policy_reply(r: Result<crate::manager::Outcome, crate::manager::ApplyError>) -> Result<Reply, String> {
    r.map(Reply::Policy).map_err(|e| crate::error::chain(&e))
}

/// One request; errors as text with every cause (they go to the CLI).
async fn handle(req: Request, state: &State) -> Result<Reply, String> {
    let commands = &state.commands;
    match req {
        Request::Status => Ok(Reply::Status(Box::new(status(state)))),
        Request::Reload => policy_reply(ask(commands, |reply| Command::Reload { source: "control".into(), reply }).await?),
        Request::Rollback { version } => policy_reply(ask(commands, |reply| Command::Rollback { version, reply }).await?),
        Request::History => ask(commands, |reply| Command::History { reply }).await.map(Reply::History),
        // The log checks the overlap (at most `audit::log::MAX_KEY_OVERLAP`).
        Request::RotateAuditKey { overlap_secs } => {
            let audit = state.audit.as_ref().ok_or("no audit log")?;
            audit.rotate_key(Duration::from_secs(overlap_secs)).await.map(Reply::KeyRotated).map_err(|e| crate::error::chain(&e))
        }
        Request::Quarantine { identity, on } => {
            let reason = format!("{} through the control socket", if on { "quarantined" } else { "released" });
            policy_reply(ask(commands, |reply| Command::Quarantine { identity, on, reason, reply: Some(reply) }).await?)
        }
        Request::Verify => {
            let verifier = state.verifier.as_ref().ok_or("continuous verification does not run here")?;
            Ok(Reply::Verified(verifier.verify(true).await))
        }
        Request::Record { identity, dir, seconds } => {
            let recorder = state.recorder.as_ref().ok_or("syscall telemetry does not run here (see `zt-agent status`)")?;
            let id = {
                let in_force = state.in_force.read().expect("poisoned");
                let live = in_force.identities.iter().any(|(n, _)| *n == identity);
                in_force.ids.iter().find(|(_, n)| live && **n == identity).map(|(id, _)| *id)
            };
            let id = id.ok_or_else(|| format!("no identity {identity:?} in the policy in force"))?;
            recorder
                .record(id, &identity, &dir, Duration::from_secs(seconds))
                .await
                .map(Reply::Recorded)
                .map_err(|e| crate::error::chain(&e))
        }
    }
}

/// The status document of `state` (also what `/metrics` shows).
pub fn status(state: &State) -> StatusDoc {
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
    let audit = state.audit.as_ref().map(|a| a.status());
    let records = audit.as_ref().map_or(0, |a| a.records);
    let siem = state
        .siem
        .iter()
        .map(|s| {
            let mut s = s.lock().expect("poisoned").clone();
            s.backlog = records.saturating_sub(s.delivered_below);
            s
        })
        .collect();
    let fanotify = state.fanotify.as_ref().map(|c| c.snapshot());
    let anomaly = state.anomaly.snapshot();
    let syscall_telemetry = state.recorder.as_ref().map_or_else(|| "not available".into(), |r| r.switch.state());
    StatusDoc {
        info: (*state.info).clone(),
        policy,
        counters: state.stats.snapshot(),
        decisions,
        audit,
        siem,
        fanotify,
        anomaly,
        syscall_telemetry,
        kubernetes: state.kube.as_ref().map(|k| k.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        verification: state.verifier.as_ref().map(|v| v.status()),
        api: state.api.as_ref().map(|a| a.status()),
    }
}

/// Client side: sends one request, returns the agent's reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let mut s = UnixStream::connect(path).await.map_err(|source| ControlError::Connect { path: path.to_path_buf(), source })?;
    let mut line = serde_json::to_string(req).map_err(ControlError::Malformed)?;
    line.push('\n');
    s.write_all(line.as_bytes()).await.map_err(ControlError::Stream)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(ControlError::Stream)?;
    match serde_json::from_str::<Response>(&buf).map_err(ControlError::Malformed)? {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(ControlError::Agent(e)),
    }
}
