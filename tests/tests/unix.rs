//! Root tests of Unix-socket rules: an agent identity tries to reach a
//! "privileged" socket (the docker.sock pattern: a service outside the
//! identity that acts on request) directly and by every way around a path
//! rule we know (a symlink, a hardlink, `..` out of an allowed directory, a
//! relative path, a datagram, an abstract name), beside a process without
//! an identity (the control) and the allowed socket. Each listener says
//! whether the bytes arrived.
use std::{
    io::Read,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram, UnixListener},
    },
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

/// A listener that records every message it receives, on a thread.
struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

impl Sink {
    fn stream(l: UnixListener) -> Sink {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = Vec::new();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = c.read_to_end(&mut buf);
                g.lock().unwrap().push(buf);
            }
        });
        Sink(got)
    }

    fn datagram(s: UnixDatagram) -> Sink {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.recv(&mut buf) {
                g.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Sink(got)
    }

    /// Messages received so far (waiting a little for one in flight).
    fn take(&self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(150));
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What `zt-test-helper around MODE TARGET` reported, run by `cmd`.
fn attempt(mut cmd: Command, mode: &str, target: &str, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let status = cmd.args(["around", mode, target]).arg(out).status().unwrap();
    assert!(status.success(), "{mode} {target}: {status}");
    std::fs::read_to_string(out).unwrap()
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn unix_socket_rules_hold_against_the_ways_around_a_path() {
    if !require_root("unix_socket_rules_hold_against_the_ways_around_a_path") {
        return;
    }
    let base = unique("unix");
    let cg = TestCgroup::new(&format!("/{base}/agent")).unwrap();
    let broad = TestCgroup::new(&format!("/{base}/broad")).unwrap();
    let tmp = tempdir("unix").unwrap();
    let dir = tmp.path();
    for d in ["priv", "ok", "elsewhere"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    let docker = dir.join("priv/docker.sock");
    let api = dir.join("ok/api.sock");
    let dgram = dir.join("priv/log.sock");
    let (abs_priv, abs_ok) = (format!("{base}-priv"), format!("{base}-ok"));
    let docker_sink = Sink::stream(UnixListener::bind(&docker).unwrap());
    let api_sink = Sink::stream(UnixListener::bind(&api).unwrap());
    let dgram_sink = Sink::datagram(UnixDatagram::bind(&dgram).unwrap());
    let abs_priv_sink = Sink::stream(UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abs_priv).unwrap()).unwrap());
    let abs_ok_sink = Sink::stream(UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abs_ok).unwrap()).unwrap());
    let symlink = dir.join("elsewhere/link.sock");
    std::os::unix::fs::symlink(&docker, &symlink).unwrap();
    let hardlink = dir.join("elsewhere/hard.sock");
    std::fs::hard_link(&docker, &hardlink).unwrap();

    let d = dir.display();
    let policy = format!(
        "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: zt.test\n  identities:\n    \
         - name: agent\n      selectors:\n        - cgroup: {}/**\n    \
         - name: broad\n      selectors:\n        - cgroup: {}/**\n  \
         rules:\n    \
         - name: agent-api\n      identity: agent\n      action: allow\n      egress:\n        - to: [unix:{d}/ok/**, unix:@{abs_ok}]\n    \
         - name: broad-all\n      identity: broad\n      action: allow\n      egress:\n        - to: [unix:/**, unix:@*]\n    \
         - name: broad-no-docker\n      identity: broad\n      action: deny\n      egress:\n        - to: [unix:{d}/priv/docker.sock]\n",
        cg.rel, broad.rel
    );
    let audit = tmp.path().join("audit");
    let key = tmp.path().join("audit.key");
    let agent = Agent::start("unix", &policy, &["--audit-dir", audit.to_str().unwrap(), "--audit-key", key.to_str().unwrap()]).unwrap();
    let status = agent.status();
    let hook = |name: &str| status["hooks"].as_array().unwrap().iter().find(|h| h["program"] == name).cloned().unwrap_or(Value::Null);
    if hook("connect_unix")["attached"] != true {
        skip("unix_socket_rules_hold_against_the_ways_around_a_path", &format!("no cgroup connect_unix hook: {}", hook("connect_unix")));
        return;
    }
    assert_eq!(hook("sendmsg_unix")["attached"], true, "{}", status["hooks"]);

    let out = dir.join("result");
    let agent_cmd = || cg.command(helper_bin());
    let control = || Command::new(helper_bin());
    let (docker_s, api_s) = (docker.to_str().unwrap(), api.to_str().unwrap());
    let zt = || vec![b"zt-unix".to_vec()];

    // The control reaches the privileged socket; the agent does not.
    assert_eq!(attempt(control(), "unix-stream", docker_s, &out), "OK");
    assert_eq!(docker_sink.take(), zt(), "the control's bytes arrive");
    assert_eq!(attempt(agent_cmd(), "unix-stream", docker_s, &out), "EPERM");
    // The allowed socket works for the agent.
    assert_eq!(attempt(agent_cmd(), "unix-stream", api_s, &out), "OK");
    assert_eq!(api_sink.take(), zt());
    // Around the path: every one lands on docker.sock's listener if let through.
    let dotdot = format!("{d}/ok/../priv/docker.sock");
    for (mode, target) in [
        ("unix-stream", symlink.to_str().unwrap()),
        ("unix-stream", hardlink.to_str().unwrap()),
        ("unix-stream", dotdot.as_str()),
        ("unix-relative", docker_s),
    ] {
        assert_eq!(attempt(agent_cmd(), mode, target, &out), "EPERM", "{mode} {target}");
        // The control's same attempt really reaches docker.sock.
        assert_eq!(attempt(control(), mode, target, &out), "OK", "control {mode} {target}");
    }
    assert_eq!(docker_sink.take().len(), 4, "only the control's 4 attempts arrive");
    // A datagram with an address (sendmsg_unix) to a socket not allowed.
    assert_eq!(attempt(agent_cmd(), "unix-dgram", dgram.to_str().unwrap(), &out), "EPERM");
    assert_eq!(attempt(control(), "unix-dgram", dgram.to_str().unwrap(), &out), "OK");
    assert_eq!(dgram_sink.take(), zt(), "only the control's datagram arrives");
    // Abstract names: exact.
    assert_eq!(attempt(agent_cmd(), "unix-abstract", &abs_priv, &out), "EPERM");
    assert_eq!(attempt(agent_cmd(), "unix-abstract", &abs_ok, &out), "OK");
    assert_eq!(abs_ok_sink.take(), zt());
    assert_eq!(attempt(control(), "unix-abstract", &abs_priv, &out), "OK");
    assert_eq!(abs_priv_sink.take(), zt(), "only the control reaches the other abstract name");

    // A broad allow with a deny for the privileged socket: deny wins.
    assert_eq!(attempt(broad.command(helper_bin()), "unix-stream", docker_s, &out), "EPERM");
    assert_eq!(attempt(broad.command(helper_bin()), "unix-stream", api_s, &out), "OK");
    assert_eq!(attempt(broad.command(helper_bin()), "unix-abstract", &abs_priv, &out), "OK");
    assert_eq!(docker_sink.take(), Vec::<Vec<u8>>::new());

    // Every denial is an event naming the address as written, and a signed audit record.
    let deadline = Instant::now() + Duration::from_secs(20);
    let denials: Vec<Value> = loop {
        let got: Vec<Value> = agent.events().into_iter().filter(|e| e["kind"] == "unix_connect").collect();
        if got.len() >= 8 {
            break got;
        }
        assert!(Instant::now() < deadline, "unix_connect events so far: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let seen: Vec<(&str, &str, &str)> = denials
        .iter()
        .map(|e| {
            (
                e["identity"]["name"].as_str().unwrap(),
                e["unix_connect"]["address"].as_str().unwrap(),
                e["unix_connect"]["hook"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(denials.iter().all(|e| e["unix_connect"]["action"] == "denied"), "{denials:?}");
    for want in [
        ("agent", docker_s, "connect_unix"),
        ("agent", symlink.to_str().unwrap(), "connect_unix"),
        ("agent", dotdot.as_str(), "connect_unix"),
        ("agent", "docker.sock", "connect_unix"),
        ("agent", dgram.to_str().unwrap(), "sendmsg_unix"),
        ("broad", docker_s, "connect_unix"),
    ] {
        assert!(seen.contains(&want), "no {want:?} in {seen:?}");
    }
    let abs = format!("@{abs_priv}");
    assert!(seen.contains(&("agent", abs.as_str(), "connect_unix")), "{seen:?}");
    let broad_rule = denials.iter().find(|e| e["identity"]["name"] == "broad").unwrap();
    assert_eq!(broad_rule["unix_connect"]["rule"], "broad-no-docker");
    let odd = denials.iter().find(|e| e["unix_connect"]["address"] == dotdot.as_str()).unwrap();
    assert_eq!(odd["unix_connect"]["unnormalized"], true);
    agent.stop().unwrap();
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir", audit.to_str().unwrap()]).output().unwrap();
    let audited = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"kind\":\"unix_connect\"")).count();
    assert!(audited >= 8, "every denial is a signed audit record ({audited})");
}
