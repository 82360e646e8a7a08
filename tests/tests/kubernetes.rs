//! Root test of Kubernetes pod identity with real containers: podman runs
//! them (runc, cgroupfs: `/libpod_parent/libpod-<id>`), a local HTTP
//! server plays the API server (a pod list, then a watch the test feeds),
//! naming those containers in pods' `containerStatuses`. No cluster runs
//! here: the pod documents are the shape `tests/fixtures/kube` records,
//! with the containers' real ids put in.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};
use zt_tests::*;

const TEST: &str = "k8s_selectors_pick_pods_listed_and_watched_and_events_name_them";

/// A pod of namespace `ns` whose one container is `container` (a podman id).
fn pod(name: &str, ns: &str, uid: &str, container: &str, rv: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv,
                     "labels": {"app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "agent", "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "main", "ready": true, "containerID": format!("cri-o://{container}")}]}
    })
}

/// Plays the API server: the pod list, then one watch whose lines come
/// from `lines`. Returns its address.
fn api_server(list: Value, lines: mpsc::Receiver<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut lines = Some(lines);
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            while r.read_line(&mut head).is_ok_and(|n| n > 2) {}
            if !head.contains("watch=1") {
                let body = list.to_string();
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                continue;
            }
            let Some(rx) = lines.take() else {
                // A second watch (the first ended): keep it open, empty.
                std::thread::spawn(move || {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    let _ = s.read(&mut [0u8; 1]);
                });
                continue;
            };
            std::thread::spawn(move || {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                for line in rx {
                    let line = format!("{line}\n");
                    if write!(s, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Accepts and counts connections on a thread.
fn far_side() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (port, n)
}

struct Containers {
    conf: PathBuf,
    names: Vec<String>,
    image: String,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("podman").args(["rm", "--force", "--time", "0", n]).env("CONTAINERS_CONF", &self.conf).output();
        }
        let _ = Command::new("podman").args(["rmi", "--force", &self.image]).env("CONTAINERS_CONF", &self.conf).output();
    }
}

#[test]
#[ignore = "needs root (podman, loads eBPF programs): cargo xtask test runs it"]
fn k8s_selectors_pick_pods_listed_and_watched_and_events_name_them() {
    if !require_root(TEST) {
        return;
    }
    for tool in ["podman", "runc"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip(TEST, &format!("{tool} is not installed (`cargo xtask setup` installs it)"));
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let Some(busybox) =
        ["target/vm/linux-6.12/bin/busybox", "target/vm/linux-6.1/bin/busybox"].iter().map(|p| root.join(p)).find(|p| p.exists())
    else {
        skip(TEST, "no static busybox under target/vm (`cargo xtask setup` unpacks it) for the containers' image");
        return;
    };
    let tmp = tempdir("kube").unwrap();
    let dir = tmp.path();
    let pm = Podman::new(dir);
    let conf = pm.conf.clone();
    let u = unique("kube");
    let ctx = dir.join("image");
    std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
    std::fs::copy(&busybox, ctx.join("rootfs/bin/busybox")).unwrap();
    std::fs::write(ctx.join("Containerfile"), "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/bin/busybox\"]\n").unwrap();
    let image = format!("localhost/zt-busybox:{u}");
    let mut containers = Containers { conf: conf.clone(), names: vec![], image: image.clone() };
    pm.ok(&["build", "--quiet", "--tag", &image, ctx.to_str().unwrap()]);
    let run = |containers: &mut Containers, name: &str| {
        containers.names.push(name.to_string());
        pm.ok(&["run", "--detach", "--name", name, "--network", "host", &image, "sleep", "600"])
    };
    let listed = run(&mut containers, &format!("{u}-listed"));
    let other_ns = run(&mut containers, &format!("{u}-other"));

    // The API server: two pods at list time, one in the policy's namespace.
    let (watch, lines) = mpsc::channel();
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": [
        pod("coder-1", "agents", "11111111-1111-4111-8111-111111111111", &listed, "90"),
        pod("web-1", "default", "22222222-2222-4222-8222-222222222222", &other_ns, "91"),
    ]});
    let api = api_server(list, lines);
    let cg_policy = "    - name: agent-pods\n      selectors:\n        - k8s:\n            namespace: agents\n            podLabels: {app.kubernetes.io/component: agent}\n";
    let agent =
        Agent::start("kube", &policy("zt.test", cg_policy), &["--kube-api", &format!("http://{api}"), "--kube-node", "node-1"]).unwrap();
    let st = agent.wait_status("the pods listed and watched", |s| s["kubernetes"]["pods"] == 2 && s["kubernetes"]["state"] == "watching");
    let line = st["paths"].as_array().unwrap().iter().find(|p| p[0] == "kubernetes pod metadata").unwrap()[1].to_string();
    assert!(line.contains(&format!("http://{api}/")) && line.contains("node node-1's pods"), "{line}");

    // The list asked the pipeline for a rescan of the cgroups; give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    let (port, arrived) = far_side();
    let nc = |container: &str| {
        Command::new("podman")
            .args(["exec", container, "/bin/busybox", "nc", "-w", "2", "127.0.0.1", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .env("CONTAINERS_CONF", &conf)
            .output()
            .unwrap()
    };
    // The listed pod's container is the identity: refused, nothing arrives.
    let o = nc(&listed);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not permitted"), "{}", String::from_utf8_lossy(&o.stderr));
    // The pod of another namespace (the control) connects.
    let o = nc(&other_ns);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(arrived.load(std::sync::atomic::Ordering::SeqCst), 1, "only the control's connection arrives: {o:?}");

    // A pod the watch adds later is picked up at once.
    let added = run(&mut containers, &format!("{u}-added"));
    watch
        .send(
            json!({"type": "ADDED", "object": pod("coder-2", "agents", "33333333-3333-4333-8333-333333333333", &added, "101")}).to_string(),
        )
        .unwrap();
    agent.wait_status("the added pod", |s| s["kubernetes"]["pods"] == 3);
    std::thread::sleep(Duration::from_secs(1));
    let o = nc(&added);
    assert!(!o.status.success(), "the watched pod's container is refused too");
    assert_eq!(arrived.load(std::sync::atomic::Ordering::SeqCst), 1, "nothing more arrived");

    // Every event of those processes names the pod.
    let denials = agent
        .wait_for("both denials", |e| e["kind"] == "connect" && e["connect"]["port"] == port && e["process"]["pod"]["name"] == "coder-2")
        .unwrap();
    for (container, name) in [(&listed, "coder-1"), (&added, "coder-2")] {
        let d = denials
            .iter()
            .find(|e| e["kind"] == "connect" && e["connect"]["port"] == port && e["process"]["container_id"] == container.as_str())
            .unwrap_or_else(|| {
                let to_port: Vec<&Value> = denials.iter().filter(|e| e["connect"]["port"] == port).collect();
                panic!("no denial of {name}'s container ({container}): {to_port:?}")
            });
        assert_eq!(d["connect"]["action"], "denied");
        assert_eq!(d["identity"]["name"], "agent-pods");
        let p = &d["process"]["pod"];
        assert_eq!(
            (p["namespace"].as_str(), p["name"].as_str(), p["service_account"].as_str()),
            (Some("agents"), Some(name), Some("agent")),
            "{d}"
        );
        assert_eq!(p["labels"]["app.kubernetes.io/component"], "agent");
    }
    let control = agent.events().into_iter().find(|e| e["kind"] == "exec" && e["process"]["container_id"] == other_ns.as_str());
    if let Some(c) = control {
        assert_eq!(c["process"]["pod"]["namespace"], "default", "{c}");
        assert!(c["identity"].is_null(), "{c}");
    }
    agent.stop().unwrap();
    drop(containers);
}

/// The API client over TLS, as in a cluster: the server's certificate
/// verified against `--kube-ca` (a pod list served by `openssl s_server
/// -WWW` from the recorded fixture), and refused against another CA with
/// the TLS error in `status`, nothing cached.
#[test]
fn the_client_verifies_the_api_servers_certificate() {
    const NAME: &str = "the_client_verifies_the_api_servers_certificate";
    if Command::new("openssl").arg("version").output().is_err() {
        skip(NAME, "openssl is not installed (`cargo xtask setup` installs it)");
        return;
    }
    use std::sync::{Arc, Mutex};
    use zt_agent::kube::{Pods, client};
    let tmp = tempdir("kube-tls").unwrap();
    let certs = zt_tests::siem::Certs::new(tmp.path()).unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(www.join("api/v1")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    std::fs::copy(root.join("fixtures/kube/pods-list.json"), www.join("api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1")).unwrap();
    let port = zt_tests::siem::free_port();
    let (cert, key) = certs.server();
    let mut server = Command::new("openssl")
        .args(["s_server", "-WWW", "-quiet", "-accept", &port.to_string(), "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .current_dir(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let watch_with = |ca: PathBuf| {
        let source = client::Source {
            api: format!("https://127.0.0.1:{port}").parse().unwrap(),
            token: None,
            ca: Some(ca),
            node: Some("node-1".into()),
        };
        let (pods, status) = (Arc::new(Pods::default()), Arc::new(Mutex::new(client::Status::default())));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        rt.block_on(async {
            let task = tokio::spawn(client::run(source, pods.clone(), status.clone(), Arc::new(|| {}), stop_rx));
            // The list, then the watch (which s_server cannot serve): one error at least.
            for _ in 0..200 {
                if status.lock().unwrap().last_error.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop.send(true);
            let _ = task.await;
        });
        let st = status.lock().unwrap().clone();
        (pods.len(), st)
    };
    let (pods, st) = watch_with(certs.ca());
    assert_eq!((pods, st.lists), (2, 1), "listed over TLS: {st:?}");
    let (pods, st) = watch_with(certs.other_ca());
    let e = st.last_error.clone().unwrap_or_default();
    assert!(pods == 0 && st.lists == 0 && e.contains("TLS with 127.0.0.1:") && e.contains("UnknownIssuer"), "{st:?}");
    let _ = server.kill();
    let _ = server.wait();
}
