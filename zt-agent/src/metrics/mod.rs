//! The observability endpoint: Prometheus `/metrics`, `/healthz` and
//! `/readyz` over HTTP/1.1 (`--metrics-addr`, loopback by default).
//!
//! # Layout
//! - [`tally`]: a pipeline output counting events by kind and decision
//!   events by identity and rule.
//! - [`exposition`]: a status snapshot + the tally -> the text exposition.
//! - [`health`]: liveness and readiness from a status snapshot.
//! - [`bind`] then [`serve`]: the server; [`Sources`]: what it answers
//!   from (the control socket's state, so `/metrics` and `status` show the
//!   same numbers). Connections are tasks of the server, at most
//!   [`MAX_CONNECTIONS`] at once, each closed after [`CONNECTION_LIMIT`]
//!   (a client that never finishes its request cannot hold one), all
//!   aborted at stop.
pub mod exposition;
pub mod health;
pub mod tally;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use crate::{bpf::loader::Bpf, control};

/// The default `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// How long one connection may stay open.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint answers from.
#[derive(Clone)]
pub struct Sources {
    pub control: control::State,
    pub tally: tally::Tally,
    pub bpf: Arc<Mutex<Bpf>>,
    /// Kernel BPF statistics are on: program run time and count are shown.
    pub bpf_stats: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("binding the metrics endpoint to {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })
}

/// Serves until `stop` turns true, then aborts the connections still open.
pub async fn serve(listener: TcpListener, sources: Sources, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            conn = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let Ok((stream, _)) = conn else { continue };
                let sources = sources.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let sources = sources.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &sources)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                        Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                        Err(_) => tracing::debug!("metrics connection closed after {CONNECTION_LIMIT:?}"),
                        Ok(Ok(())) => {}
                    }
                });
            }
        }
    }
    connections.shutdown().await;
}

fn answer<B>(req: &Request<B>, sources: &Sources) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => match metrics(sources) {
            Ok(text) => reply(StatusCode::OK, TEXT_FORMAT, text),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
        },
        "/healthz" => probe(health::liveness(&control::status(&sources.control))),
        "/readyz" => probe(health::readiness(&control::status(&sources.control))),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics, /healthz, /readyz\n".into()),
    }
}

fn metrics(sources: &Sources) -> prometheus::Result<String> {
    let status = control::status(&sources.control);
    let kernel_loss = sources.control.stats.kernel_loss.lock().expect("poisoned").clone();
    let tally = sources.tally.snapshot();
    let programs = sources.bpf_stats.then(|| sources.bpf.lock().expect("poisoned").program_stats());
    let scrape = exposition::Scrape {
        status: &status,
        kernel_loss: &kernel_loss,
        tally: &tally,
        programs: programs.as_deref(),
        now: SystemTime::now(),
    };
    exposition::render(&scrape, true)
}

fn probe(verdict: health::Verdict) -> Response<Full<Bytes>> {
    match verdict {
        Ok(body) => reply(StatusCode::OK, "text/plain", body),
        Err(body) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests;
