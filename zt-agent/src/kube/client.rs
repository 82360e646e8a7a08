//! The API server watcher: `GET /api/v1/pods` (this node's, with
//! `fieldSelector=spec.nodeName=NODE`), then a watch from the list's
//! resource version, applied to [`Pods`] as it streams. A watch that ends
//! is resumed from the last version seen; one the server says is too old
//! (410) starts over with a list; any other failure is recorded in
//! [`Status`] and retried after a backoff (1 s doubling to 30 s), with the
//! cache kept meanwhile. Every read is bounded: a list body at
//! [`MAX_LIST_BYTES`], a watch line at [`MAX_LINE_BYTES`] (a line that
//! never ends is an error, not memory), and a stream silent for
//! [`WATCH_IDLE`] is dropped (the server sends bookmarks every minute).
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncRead, io::AsyncWrite, net::TcpStream, sync::watch};

use super::{
    Pods,
    api::{self, Change},
};

pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

pub const MAX_LIST_BYTES: usize = 256 << 20;
pub const MAX_LINE_BYTES: usize = 16 << 20;
pub const WATCH_IDLE: Duration = Duration::from_secs(150);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// The server ends each watch after this (then it is resumed).
const WATCH_SECONDS: u32 = 290;
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the pods come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `https://HOST:PORT`, or `http://` (a local test server; never in a cluster).
    pub api: url::Url,
    /// A bearer token, read at every request (service account tokens rotate).
    pub token: Option<PathBuf>,
    /// The CA bundle that signed the server's certificate (https).
    pub ca: Option<PathBuf>,
    /// Only this node's pods; None: every pod the token may list.
    pub node: Option<String>,
}

impl Source {
    /// The API server as a pod sees it (`KUBERNETES_SERVICE_HOST`, its
    /// service account token and CA); None outside a cluster.
    pub fn in_cluster(node: Option<String>) -> Option<Source> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let api = url::Url::parse(&format!("https://{host}:{port}")).ok()?;
        Some(Source { api, token: Some(IN_CLUSTER_TOKEN.into()), ca: Some(IN_CLUSTER_CA.into()), node })
    }

    fn pods_path(&self, query: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = &self.node {
            q.append_pair("fieldSelector", &format!("spec.nodeName={n}"));
        }
        format!("/api/v1/pods?{}{query}", q.finish())
    }
}

/// The watcher as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub api: String,
    pub node: Option<String>,
    /// "starting", "listing", "watching", or "retrying in Ns".
    pub state: String,
    pub pods: usize,
    pub resource_version: String,
    pub lists: u64,
    pub watch_events: u64,
    /// Watch lines that were not JSON the agent understands (skipped).
    pub bad_lines: u64,
    /// Pods not cached: the cache was full.
    pub pods_dropped: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("connecting to {addr}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS with {addr}")]
    Tls { addr: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] crate::siem::transport::TransportError),
    #[error("reading the token {path}")]
    Token { path: String, source: std::io::Error },
    #[error("{0}")]
    Url(String),
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    #[error("the API server answered {code}: {body}")]
    Status { code: u16, body: String },
    #[error("{what} longer than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the pod list is not JSON the agent understands")]
    Json(#[source] serde_json::Error),
    #[error("no answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("the watch failed: {0}")]
    Watch(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One GET; the response when it is 2xx.
async fn get(source: &Source, path: &str) -> Result<hyper::Response<Incoming>, KubeError> {
    let api = &source.api;
    let host = api.host_str().ok_or_else(|| KubeError::Url(format!("{api}: no host")))?.to_string();
    let port = api.port_or_known_default().ok_or_else(|| KubeError::Url(format!("{api}: no port")))?;
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.trim_matches(['[', ']']), port)))
        .await
        .map_err(|_| KubeError::Timeout(CONNECT_TIMEOUT, "connect"))?
        .map_err(|source| KubeError::Connect { addr: addr.clone(), source })?;
    let io: Box<dyn Io> = match api.scheme() {
        "http" => Box::new(tcp),
        "https" => {
            let ca = source.ca.clone().unwrap_or_else(|| IN_CLUSTER_CA.into());
            let crate::siem::transport::Transport::Tls { config, server_name } =
                crate::siem::transport::Transport::tls(&ca, None, host.trim_matches(['[', ']']))?
            else {
                unreachable!("Transport::tls makes a TLS transport")
            };
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(server_name, tcp))
                .await
                .map_err(|_| KubeError::Timeout(CONNECT_TIMEOUT, "TLS handshake"))?
                .map_err(|source| KubeError::Tls { addr: addr.clone(), source })?;
            Box::new(tls)
        }
        other => return Err(KubeError::Url(format!("{api}: scheme {other} (https, or http for a local test server)"))),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Ends with the response (or at the watcher's stop, which drops both).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::get(path).header(header::HOST, addr.as_str()).header(header::ACCEPT, "application/json");
    if let Some(t) = &source.token {
        let token = std::fs::read_to_string(t).map_err(|e| KubeError::Token { path: t.display().to_string(), source: e })?;
        req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| KubeError::Url(e.to_string()))?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        let code = resp.status().as_u16();
        let body = read_all(resp.into_body(), 64 << 10, "an error body", CONNECT_TIMEOUT).await.unwrap_or_default();
        return Err(KubeError::Status { code, body: String::from_utf8_lossy(&body).trim().to_string() });
    }
    Ok(resp)
}

async fn read_all(mut body: Incoming, limit: usize, what: &'static str, idle: Duration) -> Result<Vec<u8>, KubeError> {
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(idle, body.frame()).await.map_err(|_| KubeError::Timeout(idle, what))? {
        if let Some(data) = frame?.data_ref() {
            if out.len() + data.len() > limit {
                return Err(KubeError::TooLarge { what, limit });
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// The watcher's shared state.
struct Watcher<'a> {
    source: &'a Source,
    pods: &'a Pods,
    status: &'a Mutex<Status>,
    /// Called after every change of the cache.
    changed: &'a (dyn Fn() + Send + Sync),
}

/// How a watch ended.
enum End {
    /// The server closed it: resume from this version.
    Closed(String),
    /// Too old: list again.
    Expired(String),
}

impl Watcher<'_> {
    fn note(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn list(&self) -> Result<String, KubeError> {
        self.note(|s| s.state = "listing".into());
        let resp = get(self.source, &self.source.pods_path("")).await?;
        let body = read_all(resp.into_body(), MAX_LIST_BYTES, "the pod list", LIST_TIMEOUT).await?;
        let list: api::PodList = serde_json::from_slice(&body).map_err(KubeError::Json)?;
        let version = list.metadata.resource_version;
        let pods: Vec<_> = list.items.into_iter().filter_map(api::Pod::meta).collect();
        let dropped = self.pods.replace_all(pods);
        self.note(|s| {
            s.lists += 1;
            s.pods = self.pods.len();
            s.pods_dropped += dropped as u64;
            s.resource_version = version.clone();
        });
        (self.changed)();
        Ok(version)
    }

    async fn watch(&self, from: &str) -> Result<End, KubeError> {
        let query = format!("&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={from}");
        let resp = get(self.source, &self.source.pods_path(&query)).await?;
        self.note(|s| s.state = "watching".into());
        let mut body = resp.into_body();
        let mut version = from.to_string();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = tokio::time::timeout(WATCH_IDLE, body.frame()).await.map_err(|_| KubeError::Timeout(WATCH_IDLE, "watch"))?;
            let Some(frame) = frame else { return Ok(End::Closed(version)) };
            let Some(data) = frame?.data_ref().cloned() else { continue };
            buf.extend_from_slice(&data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match self.apply(&line) {
                    Some(End::Expired(why)) => return Ok(End::Expired(why)),
                    Some(End::Closed(v)) => version = v,
                    None => {}
                }
            }
            if buf.len() > MAX_LINE_BYTES {
                return Err(KubeError::TooLarge { what: "a watch event", limit: MAX_LINE_BYTES });
            }
        }
    }

    /// One watch line into the cache; the version it brings (as `Closed`),
    /// or `Expired`.
    fn apply(&self, line: &[u8]) -> Option<End> {
        let change = match api::change(line) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("kubernetes watch: a line that is not a watch event ({e}); skipped");
                self.note(|s| s.bad_lines += 1);
                return None;
            }
        };
        self.note(|s| s.watch_events += 1);
        let version = match change {
            Change::Upsert(pod, v) => {
                if !self.pods.upsert(pod) {
                    self.note(|s| s.pods_dropped += 1);
                }
                (self.changed)();
                v
            }
            Change::Delete(uid, v) => {
                self.pods.remove(&uid);
                (self.changed)();
                v
            }
            Change::Version(v) => v,
            Change::Expired(why) => return Some(End::Expired(why)),
            Change::Error(why) => {
                self.note(|s| s.last_error = Some(format!("watch: {why}")));
                return None;
            }
        };
        self.note(|s| {
            s.pods = self.pods.len();
            if !version.is_empty() {
                s.resource_version = version.clone();
            }
        });
        (!version.is_empty()).then_some(End::Closed(version))
    }

    /// List, then watch until something fails.
    async fn cycle(&self, backoff: &mut Duration) -> KubeError {
        let mut version = match self.list().await {
            Ok(v) => v,
            Err(e) => return e,
        };
        *backoff = Duration::from_secs(1);
        loop {
            match self.watch(&version).await {
                Ok(End::Closed(v)) => version = v,
                Ok(End::Expired(why)) => {
                    tracing::info!("kubernetes watch expired ({why}); listing again");
                    match self.list().await {
                        Ok(v) => version = v,
                        Err(e) => return e,
                    }
                }
                Err(e) => return e,
            }
        }
    }
}

/// Lists and watches until `stop` turns true; `changed` is called after
/// every change of `pods`.
pub async fn run(
    source: Source,
    pods: Arc<Pods>,
    status: Arc<Mutex<Status>>,
    changed: Arc<dyn Fn() + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    {
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.api = source.api.to_string();
        s.node = source.node.clone();
        s.state = "starting".into();
    }
    let w = Watcher { source: &source, pods: &pods, status: &status, changed: changed.as_ref() };
    let mut backoff = Duration::from_secs(1);
    loop {
        let e = tokio::select! {
            _ = stop.changed() => return,
            e = w.cycle(&mut backoff) => e,
        };
        let why = crate::error::chain(&e);
        tracing::warn!("kubernetes pod metadata from {}: {why}; retrying in {backoff:?} (the cache is kept)", source.api);
        w.note(|s| {
            s.state = format!("retrying in {}s", backoff.as_secs());
            s.last_error = Some(why);
            s.last_error_at = Some(crate::host::wall_time(crate::host::boottime_ns()).to_string());
        });
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests;
