//! The watcher against a local HTTP server replaying API responses
//! (`tests/fixtures/kube`): list, watch, bookmarks, 410 and relist, errors
//! and backoff, a line that never ends; the cache kept through failures.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};

use super::{MAX_LINE_BYTES, Source, Status, run};
use crate::{identity::container::Workload, kube::Pods};

const LIST: &str = include_str!("../../../../tests/fixtures/kube/pods-list.json");
const WATCH: &str = include_str!("../../../../tests/fixtures/kube/pods-watch.jsonl");
const EXPIRED: &str = include_str!("../../../../tests/fixtures/kube/watch-expired.jsonl");

/// What the server answers to one request, in order.
enum Reply {
    /// A whole body with this status.
    Body(u16, &'static str),
    /// A chunked watch stream: these lines, then the stream stays open.
    Stream(String),
    /// A chunked stream of one line that never ends.
    Endless,
}

/// Serves `replies` one per connection; returns its address and the
/// request heads it received. Past the last reply, 503.
async fn server(replies: Vec<Reply>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        let mut replies = replies.into_iter();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
            let reply = replies.next().unwrap_or(Reply::Body(503, "{}"));
            tokio::spawn(async move {
                let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                match reply {
                    Reply::Body(code, body) => {
                        let head = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(body.as_bytes()).await;
                    }
                    Reply::Stream(lines) => {
                        let _ = s.write_all(chunked.as_bytes()).await;
                        // One chunk per line, split mid-line once to test reassembly.
                        for line in lines.split_inclusive('\n') {
                            let (a, b) = line.split_at(line.len() / 2);
                            for part in [a, b] {
                                let _ = s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes()).await;
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Reply::Endless => {
                        let _ = s.write_all(chunked.as_bytes()).await;
                        let chunk = format!("{:x}\r\n{}\r\n", 1 << 16, "x".repeat(1 << 16));
                        while s.write_all(chunk.as_bytes()).await.is_ok() {}
                    }
                }
            });
        }
    });
    (addr, heads)
}

struct Running {
    pods: Arc<Pods>,
    status: Arc<Mutex<Status>>,
    changes: Arc<Mutex<u64>>,
    _stop: watch::Sender<bool>,
}

fn start(addr: SocketAddr, token: Option<std::path::PathBuf>) -> Running {
    let source = Source { api: format!("http://{addr}").parse().unwrap(), token, ca: None, node: Some("node-1".into()) };
    let (pods, status, changes) = (Arc::new(Pods::default()), Arc::new(Mutex::new(Status::default())), Arc::new(Mutex::new(0)));
    let c = changes.clone();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(run(source, pods.clone(), status.clone(), Arc::new(move || *c.lock().unwrap() += 1), stop_rx));
    Running { pods, status, changes, _stop: stop }
}

async fn until(what: &str, r: &Running, pred: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = r.status.lock().unwrap().clone();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn by_container(pods: &Pods, id: &str) -> Option<Arc<crate::kube::PodMeta>> {
    pods.lookup(&Workload { pod_uid: None, container_id: Some(id.into()) })
}

const CODER: &str = "6f2b4c1e-9a7d-4e3b-8c5a-1d2e3f4a5b6c";
const PROXY_CONTAINER: &str = "b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6";
const INIT_CONTAINER: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const BATCH: &str = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e";

#[tokio::test]
async fn lists_the_nodes_pods_then_applies_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0k3n\n").unwrap();
    let watch = format!("{WATCH}not a watch event\n");
    let (addr, heads) = server(vec![Reply::Body(200, LIST), Reply::Stream(watch)]).await;
    let r = start(addr, Some(token));
    let st = until("the watch applied", &r, |s| s.watch_events == 4 && s.bad_lines == 1).await;
    assert_eq!((st.lists, st.state.as_str(), st.resource_version.as_str()), (1, "watching", "48255"), "{st:?}");
    let heads = heads.lock().unwrap().clone();
    assert!(heads[0].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1 HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(heads[0].contains("authorization: Bearer t0k3n\r\n"), "{}", heads[0]);
    assert!(heads[1].contains("&watch=1&allowWatchBookmarks=true") && heads[1].contains("resourceVersion=48213 "), "{}", heads[1]);
    let p = &r.pods;
    let coder = p.lookup(&Workload { pod_uid: Some(CODER.into()), container_id: None }).expect("the listed pod");
    assert_eq!(
        (coder.namespace.as_str(), coder.name.as_str(), coder.service_account.as_str()),
        ("agents", "coder-7d9f8b6c5-x2lqp", "agent")
    );
    assert_eq!(coder.labels["app.kubernetes.io/component"], "agent");
    assert_eq!(coder.labels["zt-agent.io/quarantine"], "false", "the MODIFIED event's label");
    assert_eq!(by_container(p, PROXY_CONTAINER).unwrap().uid, CODER, "a sidecar");
    assert_eq!(by_container(p, INIT_CONTAINER).unwrap().uid, CODER, "an init container");
    assert!(p.lookup(&Workload { pod_uid: Some(BATCH.into()), container_id: None }).is_none(), "ADDED then DELETED");
    assert_eq!(p.len(), 2);
    assert!(*r.changes.lock().unwrap() >= 4, "every change announced");
}

#[tokio::test]
async fn an_expired_watch_lists_again() {
    let (addr, heads) =
        server(vec![Reply::Body(200, LIST), Reply::Stream(EXPIRED.into()), Reply::Body(200, LIST), Reply::Stream(String::new())]).await;
    let r = start(addr, None);
    let st = until("listed twice, watching", &r, |s| s.lists == 2 && s.state == "watching").await;
    assert_eq!(st.last_error, None, "a 410 is not an error: {st:?}");
    let heads = heads.lock().unwrap().clone();
    assert!(heads[2].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1 HTTP"), "a list, not a watch: {}", heads[2]);
    assert!(!heads[0].contains("authorization"), "no token, no header");
}

/// A server that refuses, then one whose watch line never ends: each is
/// recorded, retried after the backoff, and the cache stays as it was.
#[tokio::test]
async fn failures_are_recorded_retried_and_keep_the_cache() {
    let forbidden = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:zt-system:default\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
    let (addr, _) = server(vec![
        Reply::Body(403, forbidden),
        Reply::Body(200, LIST),
        Reply::Endless,
        Reply::Body(200, LIST),
        Reply::Stream(String::new()),
    ])
    .await;
    let r = start(addr, None);
    let st = until("the 403 recorded", &r, |s| s.last_error.is_some()).await;
    let e = st.last_error.unwrap();
    assert!(e.contains("403") && e.contains("cannot list resource"), "{e}");
    assert!(st.state.starts_with("retrying in 1s"), "{}", st.state);
    let st = until("the endless line refused", &r, |s| s.last_error.as_deref().is_some_and(|e| e.contains("longer than"))).await;
    assert!(st.last_error.unwrap().contains(&format!("a watch event longer than {MAX_LINE_BYTES} bytes")));
    assert_eq!(r.pods.len(), 2, "the listed pods are kept");
    until("listed again, watching", &r, |s| s.lists == 2 && s.state == "watching").await;
}
