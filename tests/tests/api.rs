//! Root test of the remote API over mutual TLS, with real TLS clients
//! (curl, `openssl s_client`) and certificates made here with openssl: a
//! CA, the server's certificate, and clients with a SPIFFE ID that may
//! push, one that may only read, one without a SPIFFE ID, one expired and
//! one from another CA.
//!
//! The right client pushes a policy (an identity's connects then get out:
//! the kernel enforces what was pushed), a bad one is refused at its
//! `file:line:column`, and a rollback denies them again. Every wrong
//! client is refused with its reason: the client is told, and the signed
//! audit log holds an `api` record of every call, allowed or refused,
//! with the caller's SPIFFE ID.
use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

/// The API's clients: curl with a certificate of `dir`.
struct Api {
    dir: PathBuf,
    url: String,
}

/// What curl got: its exit code, the HTTP status (0: none) and the body,
/// and its error text.
struct Reply {
    exit: i32,
    status: u16,
    body: String,
    stderr: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Api {
    /// curl as `client` (None: no certificate); `extra` before the URL.
    fn curl(&self, client: Option<&str>, extra: &[&str], path: &str) -> Reply {
        let mut c = Command::new("curl");
        c.current_dir(&self.dir).args(["-sS", "--max-time", "10", "--cacert", "ca.pem", "-w", "\n%{http_code}"]);
        if let Some(name) = client {
            c.args(["--cert", &format!("{name}.pem"), "--key", &format!("{name}.key")]);
        }
        let o: Output = c.args(extra).arg(format!("{}{path}", self.url)).output().expect("curl (apt package curl)");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        Reply {
            exit: o.status.code().unwrap_or(-1),
            status: code.parse().unwrap_or(0),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    fn get(&self, client: &str, path: &str) -> Reply {
        self.curl(Some(client), &[], path)
    }

    fn push(&self, client: &str, name: &str, policy: &str) -> Reply {
        let file = self.dir.join(format!("push-{name}"));
        std::fs::write(&file, policy).unwrap();
        let data = format!("@{}", file.display());
        self.curl(Some(client), &["-X", "PUT", "--data-binary", &data], &format!("/v1/policy?name={name}"))
    }
}

fn identity(cg: &TestCgroup, rules: &str) -> String {
    policy("zt.test", &format!("    - name: coder\n      selectors:\n        - cgroup: {}/**\n{rules}", cg.rel))
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn mutual_tls_clients_are_authorised_by_spiffe_id_and_every_call_is_recorded() {
    if !require_root("mutual_tls_clients_are_authorised_by_spiffe_id_and_every_call_is_recorded") {
        return;
    }
    let tmp = tempdir("api").unwrap();
    let dir = tmp.path().to_path_buf();
    mtls::certificates(&dir);
    let config = dir.join("config.yaml");
    std::fs::write(&config, mtls::api_config(&dir)).unwrap();
    let cg = TestCgroup::new(&format!("/{}/coder", unique("api"))).unwrap();
    let listener = Listener::new();
    let addr = listener.addr();
    let port = addr.rsplit_once(':').unwrap().1;
    let audit_dir = dir.join("audit");
    let key = dir.join("audit.key");
    let args = ["--config", config.to_str().unwrap(), "--audit-dir", audit_dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()];
    let agent = Agent::start("api", &identity(&cg, ""), &args).unwrap();
    let listen = agent.status()["api"]["listen"].as_str().unwrap().to_string();
    assert!(listen.starts_with("https://127.0.0.1:"), "{listen}");
    let api = Api { dir: dir.clone(), url: listen };
    let denied = || connect_loop(cg.command(helper_bin()), 200, &addr).1;
    assert_eq!(denied(), 0, "no egress rule: the identity is denied");

    // The right client reads status, over TLS 1.3.
    let r = api.get("deployer", "/v1/status");
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    assert_eq!(r.json()["policy"]["version"], 1);
    let version = Command::new("openssl")
        .args(["s_client", "-connect", api.url.trim_start_matches("https://"), "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg("-cert")
        .arg(dir.join("viewer.pem"))
        .arg("-key")
        .arg(dir.join("viewer.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    let r = api.curl(Some("deployer"), &["--tls-max", "1.2"], "/v1/status");
    assert!(r.exit != 0 && r.status == 0, "TLS 1.2 refused: {} {}", r.body, r.stderr);

    // A stream of events while the calls below are made.
    let stream_out = dir.join("stream.jsonl");
    let mut stream = Command::new("curl")
        .current_dir(&dir)
        .args(["-sSN", "--max-time", "60", "--cacert", "ca.pem", "--cert", "deployer.pem", "--key", "deployer.key"])
        .arg(format!("{}/v1/events?show=all", api.url))
        .stdout(std::fs::File::create(&stream_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    agent.wait_status("the stream is open", |s| s["api"]["open_streams"] == 1);

    // Push: the kernel enforces the pushed policy; a bad one changes nothing.
    let allow = format!(
        "  rules:\n    - name: pushed-allow\n      identity: coder\n      action: allow\n      egress:\n        - to: [127.0.0.1/32]\n          ports: [{port}]\n"
    );
    let r = api.push("deployer", "coder.yaml", &identity(&cg, &allow));
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    assert_eq!(r.json()["version"], 2, "{}", r.body);
    assert!(denied() > 0, "the pushed allow rule is enforced");
    let st = agent.status();
    assert_eq!(st["policy"]["files"], serde_json::json!(["api:coder.yaml"]));
    let r = api.push("deployer", "bad.yaml", &identity(&cg, "  rules:\n    - name: x\n      identity: nobody\n      action: allow\n"));
    assert_eq!(r.status, 422, "{}", r.body);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("api:bad.yaml:") && err.contains("nobody"), "{err}");
    assert_eq!(agent.status()["policy"]["version"], 2, "the rejected push changed nothing");
    let history = api.get("viewer", "/v1/policy");
    assert_eq!(history.status, 200);
    assert!(
        history.json().as_array().unwrap().iter().any(|h| h["source"] == "api push by spiffe://zt.test/ops/deployer"),
        "{}",
        history.body
    );
    // Rollback: denied again.
    let r = api.curl(Some("deployer"), &["-X", "POST"], "/v1/policy/rollback");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(denied(), 0, "rolled back: denied again");

    // Refused, each with its reason.
    let r = api.push("viewer", "x.yaml", &identity(&cg, &allow));
    assert_eq!(r.status, 403);
    assert!(r.body.contains("spiffe://zt.test/ops/viewer may not push"), "{}", r.body);
    let r = api.get("viewer", "/v1/events");
    assert!(r.status == 403 && r.body.contains("may not stream"), "{}", r.body);
    let r = api.get("no-spiffe", "/v1/status");
    assert!(r.status == 403 && r.body.contains("has no SPIFFE ID"), "{}", r.body);
    let r = api.get("expired", "/v1/status");
    assert!(r.exit != 0 && r.status == 0 && r.stderr.contains("expired"), "expired: {} {}", r.body, r.stderr);
    let r = api.get("stranger", "/v1/status");
    assert!(r.exit != 0 && r.status == 0 && r.stderr.contains("unknown ca"), "another CA: {} {}", r.body, r.stderr);
    let r = api.curl(None, &[], "/v1/status");
    assert!(r.exit != 0 && r.status == 0, "no client certificate: {} {}", r.body, r.stderr);
    let plain = api.url.replace("https://", "http://");
    let o = Command::new("curl").args(["-sS", "--max-time", "10"]).arg(format!("{plain}/v1/status")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("this port speaks HTTPS only"), "{o:?}");
    let st = agent.status();
    assert!(st["api"]["refused"].as_u64().unwrap() >= 8, "{}", st["api"]);

    // The stream saw the calls, as they happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let streamed = loop {
        let lines: Vec<Value> =
            std::fs::read_to_string(&stream_out).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let plaintext = lines.iter().any(|e| e["kind"] == "api" && e["api"]["detail"].as_str().is_some_and(|d| d.starts_with("plaintext")));
        if plaintext || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = stream.kill();
    let _ = stream.wait();
    assert!(streamed.iter().any(|e| e["kind"] == "policy" && e["policy"]["action"] == "rolled_back"), "{streamed:?}");
    assert!(
        streamed.iter().any(|e| e["kind"] == "api" && e["api"]["detail"].as_str().is_some_and(|d| d.starts_with("plaintext"))),
        "{streamed:?}"
    );

    // Every call is a signed audit record with the caller.
    agent.stop().unwrap();
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir"]).arg(&audit_dir).output().unwrap();
    let records: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "api")
        .map(|r| r["payload"]["api"].clone())
        .collect();
    let find = |pred: &dyn Fn(&Value) -> bool| records.iter().filter(|a| pred(a)).count();
    let detail = |a: &Value, s: &str| a["detail"].as_str().is_some_and(|d| d.contains(s));
    assert_eq!(find(&|a| a["method"] == "PUT" && a["outcome"] == "allowed" && a["spiffe_id"] == "spiffe://zt.test/ops/deployer"), 1);
    assert_eq!(find(&|a| a["method"] == "PUT" && a["status"] == 422), 1);
    assert_eq!(find(&|a| a["spiffe_id"] == "spiffe://zt.test/ops/viewer" && a["status"] == 403), 2);
    assert_eq!(find(&|a| a["status"] == 403 && detail(a, "has no SPIFFE ID")), 1);
    assert_eq!(find(&|a| a["outcome"] == "refused" && detail(a, "expired")), 1, "{records:?}");
    assert_eq!(find(&|a| a["outcome"] == "refused" && detail(a, "not issued by the API's client CA")), 1, "{records:?}");
    assert_eq!(find(&|a| a["outcome"] == "refused" && detail(a, "no client certificate")), 1, "{records:?}");
    assert_eq!(find(&|a| a["outcome"] == "refused" && detail(a, "cannot speak TLS 1.3")), 1, "{records:?}");
    assert_eq!(find(&|a| detail(a, "plaintext connection refused")), 1);
    // The refused expired and other-CA clients presented the deployer's ID: recorded as presented.
    assert_eq!(find(&|a| a["outcome"] == "refused" && a["status"].is_null() && a["spiffe_id"] == "spiffe://zt.test/ops/deployer"), 2);
}

#[test]
#[ignore = "needs root (loads eBPF programs): cargo xtask test runs it"]
fn the_local_socket_answers_root_only_even_when_its_mode_lets_others_in() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    if !require_root("the_local_socket_answers_root_only_even_when_its_mode_lets_others_in") {
        return;
    }
    let agent =
        Agent::start("peercred", &policy("zt.test", "    - name: a\n      selectors:\n        - exe: /nothing/runs/this\n"), &[]).unwrap();
    // A wrong mode: anyone may connect. The agent binary copied where
    // nobody can run it.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = agent.dir.join("zt-agent-copy");
    std::fs::copy(agent_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(&bin).args(["status", "--socket"]).arg(&agent.socket).uid(65534).gid(65534).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success() && text.contains("answers root only") && text.contains("uid 65534"), "{text}");
    // Root (the control) is answered.
    assert_eq!(agent.status()["policy"]["version"], 1);
    assert!(agent.stderr().contains("control socket: refused"), "logged");
}
