//! The remote control API: HTTP/1.1 over mutual TLS (the `api` section of
//! the agent config; off without it). Callers are known by the SPIFFE ID
//! in their certificate and may do what the config's grants give that ID.
//! Every call, allowed or refused, is an `api` event: a security record,
//! signed into the audit log and sent to the SIEM.
//!
//! | call | permission |
//! |---|---|
//! | `GET /v1/status` | read |
//! | `GET /v1/policy` (history) | read |
//! | `PUT /v1/policy?name=FILE` (body: one policy file, YAML) | push |
//! | `POST /v1/policy/rollback[?version=N]` | push |
//! | `GET /v1/events[?show=all]` (JSON lines until the client leaves) | stream |
//!
//! # Layout
//! - [`authz`]: SPIFFE ID patterns and permissions (pure).
//! - [`tls`]: the server's TLS (1.3 only, ring, client certificate
//!   required) and why a handshake failed.
//! - [`stream`]: the pipeline output behind `/v1/events`.
//! - [`Options`] (the config section, checked) -> [`bind`] -> [`serve`]:
//!   one task per connection, at most [`MAX_CONNECTIONS`], the TLS
//!   handshake within [`HANDSHAKE_TIMEOUT`], each request's headers within
//!   [`HEADER_TIMEOUT`]; every connection still open is aborted at stop.
//!   A client that does not speak TLS is answered in plain HTTP with why
//!   (and recorded).
//! - [`ApiCall`]: the audit record of one call.
pub mod authz;
pub mod stream;
pub mod tls;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};

use self::authz::{Permission, Rules};
use crate::{
    control::{self, ask},
    host::{boottime_ns, wall_time},
    manager::Command,
    pipeline::{
        Input,
        event::{Body, Event},
        output::Show,
    },
    policy::{Bundle, MAX_BUNDLE_BYTES},
};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers (also how long
/// an idle kept-alive connection stays open).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API's {what} {path}: {reason}")]
    Tls { what: &'static str, path: String, reason: String },
    #[error("binding the API to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The `api` section of the config, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub listen: SocketAddr,
    /// Client certificates must chain to one of these (PEM).
    pub ca: PathBuf,
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub rules: Rules,
}

/// The audit record of one call (or of a connection refused before any).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiCall {
    /// The client's address and port.
    pub peer: String,
    /// From the client certificate, when it presented one with a SPIFFE ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// None: refused before a request (plaintext, TLS handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// "allowed" or "refused".
    pub outcome: &'static str,
    /// The HTTP status answered (none for a failed handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What was done (the policy version), or why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The API's part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `https://ADDR`.
    pub listen: String,
    pub grants: usize,
    pub allowed: u64,
    pub refused: u64,
    pub open_streams: usize,
}

/// Counters behind [`Status`].
#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    refused: AtomicU64,
}

/// What `status` shows of the API; cloning shares it.
#[derive(Clone)]
pub struct Monitor {
    listen: String,
    grants: usize,
    counters: Arc<Counters>,
    hub: stream::Hub,
}

impl Monitor {
    pub fn status(&self) -> Status {
        Status {
            listen: self.listen.clone(),
            grants: self.grants,
            allowed: self.counters.allowed.load(Relaxed),
            refused: self.counters.refused.load(Relaxed),
            open_streams: self.hub.open_streams(),
        }
    }
}

/// A bound server, its TLS loaded.
pub struct Bound {
    listener: TcpListener,
    tls: tls::Tls,
    rules: Rules,
}

impl Bound {
    /// The API's part of `status`, its live events from `hub`.
    pub fn monitor(&self, hub: stream::Hub) -> Monitor {
        let listen = self.listener.local_addr().map_or_else(|_| "?".into(), |a| format!("https://{a}"));
        Monitor { listen, grants: self.rules.0.len(), counters: Arc::default(), hub }
    }
}

/// Loads the TLS files and binds: a bad file or an address in use stops
/// the agent's start before anything is loaded.
pub async fn bind(opts: &Options) -> Result<Bound, ApiError> {
    let tls = tls::Tls::load(&opts.ca, &opts.cert, &opts.key)?;
    let listener = TcpListener::bind(opts.listen).await.map_err(|source| ApiError::Bind { addr: opts.listen, source })?;
    Ok(Bound { listener, tls, rules: opts.rules.clone() })
}

/// What the server answers from.
#[derive(Clone)]
pub struct Context {
    pub control: control::State,
    pub monitor: Monitor,
    /// Where the `api` records go.
    pub pipeline: mpsc::Sender<Input>,
    pub node: Arc<str>,
}

impl Context {
    async fn record(&self, call: ApiCall) {
        let counters = &self.monitor.counters;
        let counter = if call.outcome == "allowed" { &counters.allowed } else { &counters.refused };
        counter.fetch_add(1, Relaxed);
        if call.outcome != "allowed" {
            tracing::warn!(
                "API call refused: {} {} from {} ({}): {}",
                call.method.as_deref().unwrap_or("-"),
                call.path.as_deref().unwrap_or("-"),
                call.peer,
                call.spiffe_id.as_deref().unwrap_or("no SPIFFE ID"),
                call.detail.as_deref().unwrap_or_default()
            );
        }
        let ev = Event { time: wall_time(boottime_ns()), node: self.node.clone(), body: Body::Api { api: call } };
        let _ = self.pipeline.send(Input::Emit(Box::new(ev))).await;
    }
}

/// Serves until `stop` turns true, then aborts the connections still open.
pub async fn serve(bound: Bound, ctx: Context, mut stop: watch::Receiver<bool>) {
    let tls = Arc::new(bound.tls);
    let rules = Arc::new(bound.rules);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            conn = bound.listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let Ok((tcp, peer)) = conn else { continue };
                // Replies are whole TLS records: no reason to wait for more.
                let _ = tcp.set_nodelay(true);
                let conn = Connection { ctx: ctx.clone(), rules: rules.clone(), peer, stop: stop.clone() };
                connections.spawn(conn.serve(tcp, tls.clone()));
            }
        }
    }
    connections.shutdown().await;
}

/// One client connection.
struct Connection {
    ctx: Context,
    rules: Arc<Rules>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl Connection {
    async fn serve(self, tcp: TcpStream, tls: Arc<tls::Tls>) {
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Ok(1)) => return self.refuse_plaintext(tcp).await,
            // Connected and left, or never spoke: nothing was asked.
            _ => return,
        }
        let (config, presented) = tls.config();
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(config).accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let spiffe_id = presented.lock().expect("poisoned").take().and_then(Result::ok);
                return self.refused_handshake(spiffe_id, tls::refusal(&e)).await;
            }
            Err(_) => return self.refused_handshake(None, format!("the TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}")).await,
        };
        // The verifier accepted the chain; the ID is checked per request
        // (so that a certificate without one is told why, in HTTP).
        let caller = match stream.get_ref().1.peer_certificates() {
            Some([ee, ..]) => tls::presented_id(ee),
            _ => Err("no client certificate".to_string()),
        };
        let this = Arc::new((self, caller));
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.0.answer(req, &this.1).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            tracing::debug!("API connection: {e}");
        }
    }

    async fn refuse_plaintext(self, mut tcp: TcpStream) {
        let why = "this port speaks HTTPS only: TLS 1.3 with a client certificate carrying a SPIFFE ID";
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
            why.len() + 1
        );
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.write_all(reply.as_bytes())).await;
        let _ = tcp.shutdown().await;
        self.refused_handshake(None, format!("plaintext connection refused: {why}")).await;
    }

    async fn refused_handshake(&self, spiffe_id: Option<String>, why: String) {
        let call = ApiCall {
            peer: self.peer.to_string(),
            spiffe_id,
            method: None,
            path: None,
            outcome: "refused",
            status: None,
            detail: Some(why),
        };
        self.ctx.record(call).await;
    }

    /// One request: authorise, act, record.
    async fn answer(&self, req: Request<hyper::body::Incoming>, caller: &Result<String, String>) -> Response<BoxBody<Bytes, Infallible>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let (response, detail) = self.route(req, caller).await;
        let status = response.status();
        let call = ApiCall {
            peer: self.peer.to_string(),
            spiffe_id: caller.as_ref().ok().cloned(),
            method: Some(method),
            path: Some(path),
            outcome: if status.is_success() { "allowed" } else { "refused" },
            status: Some(status.as_u16()),
            detail,
        };
        self.ctx.record(call).await;
        response
    }

    /// The response, and what the audit record says about it.
    async fn route(
        &self,
        req: Request<hyper::body::Incoming>,
        caller: &Result<String, String>,
    ) -> (Response<BoxBody<Bytes, Infallible>>, Option<String>) {
        let call = match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/status") => Call::Status,
            (&Method::GET, "/v1/policy") => Call::History,
            (&Method::PUT, "/v1/policy") => Call::Push,
            (&Method::POST, "/v1/policy/rollback") => Call::Rollback,
            (&Method::GET, "/v1/events") => Call::Events,
            (_, "/v1/status" | "/v1/policy" | "/v1/policy/rollback" | "/v1/events") => {
                return refused(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not served for {}", req.method(), req.uri().path()));
            }
            _ => return refused(StatusCode::NOT_FOUND, format!("no such call {}", req.uri().path())),
        };
        let id = match caller {
            Ok(id) => id,
            Err(why) => return refused(StatusCode::FORBIDDEN, why.clone()),
        };
        let permission = call.permission();
        if !self.rules.allows(id, permission) {
            return refused(
                StatusCode::FORBIDDEN,
                format!("{id} may not {} (no grant in the agent config's api.allow gives it)", permission.name()),
            );
        }
        let query = |key: &str| {
            url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let commands = &self.ctx.control.commands;
        match call {
            Call::Status => json(StatusCode::OK, &control::status(&self.ctx.control), None),
            Call::History => match ask(commands, |reply| Command::History { reply }).await {
                Ok(history) => json(StatusCode::OK, &history, None),
                Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
            },
            Call::Events => {
                let show = match query("show").as_deref() {
                    None | Some("attributed") => Show::Attributed,
                    Some("all") => Show::All,
                    Some(other) => return refused(StatusCode::BAD_REQUEST, format!("show={other:?}: expected attributed or all")),
                };
                let body = self.ctx.monitor.hub.subscribe(show, self.stop.clone());
                let mut r = Response::new(body.boxed());
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
                (r, Some("stream opened".into()))
            }
            Call::Rollback => {
                let version = match query("version").map(|v| v.parse::<u64>()) {
                    None => None,
                    Some(Ok(v)) => Some(v),
                    Some(Err(_)) => return refused(StatusCode::BAD_REQUEST, "version must be a number".into()),
                };
                policy_reply(ask(commands, |reply| Command::Rollback { version, reply }).await)
            }
            Call::Push => {
                let name = query("name").unwrap_or_else(|| "pushed.yaml".into());
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                    return refused(StatusCode::BAD_REQUEST, format!("name={name:?}: a file name of [A-Za-z0-9._-]"));
                }
                let text = match Limited::new(req.into_body(), MAX_BUNDLE_BYTES as usize).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return refused(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the policy: {e}")),
                };
                let Ok(text) = String::from_utf8(text.to_vec()) else {
                    return refused(StatusCode::BAD_REQUEST, "the policy is not UTF-8 text".into());
                };
                let bundle = Bundle { files: vec![(format!("api:{name}"), text)] };
                let source = format!("api push by {id}");
                policy_reply(ask(commands, |reply| Command::Push { bundle, source, reply }).await)
            }
        }
    }
}

/// What a request asks for.
enum Call {
    Status,
    History,
    Push,
    Rollback,
    Events,
}

impl Call {
    fn permission(&self) -> Permission {
        match self {
            Call::Status | Call::History => Permission::Read,
            Call::Push | Call::Rollback => Permission::Push,
            Call::Events => Permission::Stream,
        }
    }
}

type Answer = (Response<BoxBody<Bytes, Infallible>>, Option<String>);

fn policy_reply(r: Result<Result<crate::manager::Outcome, crate::manager::ApplyError>, String>) -> Answer {
    match r {
        Ok(Ok(o)) => {
            let detail = format!("policy v{} in force (blake3:{})", o.version, o.digest);
            json(StatusCode::OK, &o, Some(detail))
        }
        // The policy is not applied: every problem at its place.
        Ok(Err(e)) => refused(StatusCode::UNPROCESSABLE_ENTITY, crate::error::chain(&e)),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn json(status: StatusCode, body: &impl Serialize, detail: Option<String>) -> Answer {
    let mut text = serde_json::to_vec(body).expect("replies serialise");
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    (r, detail)
}

/// `{"error": why}` with `status`; `why` is also the record's detail.
fn refused(status: StatusCode, why: String) -> Answer {
    let (r, _) = json(status, &serde_json::json!({ "error": why }), None);
    (r, Some(why))
}
