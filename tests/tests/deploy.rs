//! The deployment files, exercised: every Kubernetes manifest validated
//! against the API schemas (`kubernetes-validate`, from PyPI, in
//! `target/kubernetes-validate`), the systemd unit checked by
//! `systemd-analyze verify`, and (root) the image built with podman from
//! `deploy/Containerfile` running the DaemonSet's own pod template through
//! `podman kube play`: the containerised agent attributes and denies a host
//! process as the bare binary does, and keeps enforcing across a container
//! kill and restart.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use zt_tests::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn manifest(name: &str) -> PathBuf {
    root().join("deploy/kubernetes").join(name)
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifests `kustomization.yaml` lists: every manifest there is.
fn manifests() -> Vec<String> {
    let k = yaml(&manifest("kustomization.yaml"));
    let listed: Vec<String> = k["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    let mut present: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, present, "kustomization.yaml lists every manifest");
    listed
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validator = root().join("target/kubernetes-validate/bin/kubernetes-validate");
    if !validator.exists() {
        skip("manifests_validate_against_the_kubernetes_schemas", "kubernetes-validate is not installed (`cargo xtask setup` installs it)");
        return;
    }
    let files = manifests();
    // 1.30: the first with `appArmorProfile`; 1.37: the newest the validator knows.
    for version in ["1.30.0", "1.37.0"] {
        let o = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(files.iter().map(|f| manifest(f)))
            .output()
            .unwrap();
        assert!(o.status.success(), "kubernetes {version}: {}", text(&o));
        let passed = text(&o).matches(" passed for resource ").count();
        assert_eq!(passed, 7, "every resource checked against {version}: {}", text(&o));
    }
    // The control: a field Kubernetes does not know fails.
    let tmp = tempdir("kv").unwrap();
    let bad = tmp.path().join("daemonset.yaml");
    let ds = std::fs::read_to_string(manifest("daemonset.yaml"))
        .unwrap()
        .replace("      hostPID: true\n", "      hostPID: true\n      hostPIDs: true\n");
    std::fs::write(&bad, ds).unwrap();
    let o = Command::new(&validator).args(["--strict", "--kubernetes-version", "1.30.0"]).arg(&bad).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("hostPIDs"), "{}", text(&o));
}

#[test]
fn the_configmaps_hold_a_valid_config_and_the_shipped_policy() {
    let cfg = yaml(&manifest("config.yaml"));
    let tmp = tempdir("cm").unwrap();
    let file = tmp.path().join("config.yaml");
    std::fs::write(&file, cfg["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let o = Command::new(agent_bin()).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let pol = yaml(&manifest("policy.yaml"));
    let shipped = std::fs::read_to_string(root().join("policies/k8s-namespace-baseline.yaml")).unwrap();
    assert_eq!(
        pol["data"]["baseline.yaml"].as_str().unwrap(),
        shipped,
        "the ConfigMap carries policies/k8s-namespace-baseline.yaml verbatim"
    );
    // The paths the config names are the DaemonSet's mounts.
    let ds = yaml(&manifest("daemonset.yaml"));
    let mounts: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in ["/etc/zt-agent/policies", "/var/lib/zt-agent", "/etc/zt-agent/keys", "/sys/fs/bpf", "/etc/zt-agent/config"] {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        skip("the_systemd_unit_verifies", "systemd-analyze is not installed");
        return;
    }
    // The unit as shipped, but for the binary's path (verify checks it exists).
    let tmp = tempdir("unit").unwrap();
    let unit = tmp.path().join("zt-agent.service");
    let shipped = std::fs::read_to_string(root().join("deploy/systemd/zt-agent.service")).unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/zt-agent run"));
    std::fs::write(&unit, shipped.replace("/usr/bin/zt-agent", agent_bin().to_str().unwrap())).unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "systemd-analyze verify: {}", text(&o));
    let o = Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output().unwrap();
    let exposure = text(&o).lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_string();
    eprintln!("systemd-analyze security: {exposure}");
    assert!(!exposure.is_empty() && !exposure.contains("UNSAFE"), "{}", text(&o));
}

/// What `podman kube play` runs: the DaemonSet's pod template as a Pod,
/// with the config and policy ConfigMaps, changed only where a test on a
/// shared host must be: the image, the node name (podman has no
/// `spec.nodeName`), the state directory and the pin directory (private
/// ones), the policy (a test cgroup), and the audit key (podman 4.3 ignores
/// a secret volume's `defaultMode`, and the agent refuses a key others may
/// read, so the key comes from a host directory, mode 0400).
fn pod_from_daemonset(name: &str, image: &str, dir: &Path, pin_dir: &str, policy: &str) -> String {
    let ds = yaml(&manifest("daemonset.yaml"));
    let template = &ds["spec"]["template"];
    let mut spec = template["spec"].clone();
    let c = &mut spec["containers"][0];
    c["image"] = json!(image);
    c["env"] = json!([{"name": "ZT_NODE_NAME", "value": "deploy-test-node"}]);
    for v in spec["volumes"].as_array_mut().unwrap() {
        match v["name"].as_str().unwrap() {
            "state" => v["hostPath"]["path"] = json!(dir.join("state").to_str().unwrap()),
            "audit-key" => {
                *v = json!({"name": "audit-key", "hostPath": {"path": dir.join("keys").to_str().unwrap(), "type": "Directory"}});
            }
            _ => {}
        }
    }
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": template["metadata"]["labels"]}, "spec": spec});
    let mut config = yaml(&manifest("config.yaml"));
    let text = config["data"]["config.yaml"].as_str().unwrap().replace("pinDir: /sys/fs/bpf/zt-agent", &format!("pinDir: {pin_dir}"));
    assert!(text.contains(pin_dir), "the config names its pin directory");
    config["data"]["config.yaml"] = json!(text);
    let mut pol = yaml(&manifest("policy.yaml"));
    pol["data"] = json!({"test.yaml": policy});
    [config, pol, pod].iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n---\n")
}

/// JSON lines of the container's output (events on stdout, JSON logs on stderr).
fn container_lines(podman: &Podman, container: &str) -> Vec<Value> {
    let o = podman.run(&["logs", container]);
    text(&o).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/readyz` at the pod's IP (which a restart may change), as the
/// kubelet's probe asks it, until 200 (90 s at most; then the last answer
/// and the container's log).
fn wait_ready(podman: &Podman, pod: &str, container: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let infra = podman.ok(&["pod", "inspect", pod, "--format", "{{.InfraContainerID}}"]);
        let ip = podman.ok(&["inspect", &infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"]);
        let probe = format!("{ip}:9464");
        let last = match std::net::TcpStream::connect(&probe) {
            Ok(_) => match http_get(&probe, "/readyz") {
                (200, body) => return body,
                (code, body) => format!("{code} {body}"),
            },
            Err(e) => format!("connecting to {probe}: {e}"),
        };
        if Instant::now() > deadline {
            let log = text(&podman.run(&["logs", "--tail", "20", container]));
            panic!("/readyz not 200 within 90 s; last: {last}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Connect attempts from `cmd`: (denied, other) counts over 200 ms.
fn attempts(mut cmd: Command, addr: &str) -> (u64, u64) {
    let out = cmd.args(["connect-loop", "200", addr]).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    let mut it = t.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

struct Cleanup<'a> {
    podman: &'a Podman,
    pod: String,
    image: String,
    pin_dir: String,
}

/// The volumes `kube play` makes of the manifest's ConfigMaps and emptyDir,
/// named after them: left over, a ConfigMap volume keeps its old files.
const KUBE_VOLUMES: [&str; 3] = ["zt-agent-config", "zt-agent-policy", "run"];

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["pod", "rm", "--force", "--time", "5", &self.pod]);
        let _ = self.podman.run(&[&["volume", "rm", "--force"][..], &KUBE_VOLUMES].concat());
        let _ = self.podman.run(&["rmi", "--force", &self.image]);
        let _ = Command::new(agent_bin()).args(["uninstall", "--pin-dir", &self.pin_dir]).output();
    }
}

#[test]
#[ignore = "needs root (podman, loads eBPF programs): cargo xtask test runs it"]
fn the_daemonset_pod_enforces_like_the_bare_binary_and_across_a_restart() {
    const TEST: &str = "the_daemonset_pod_enforces_like_the_bare_binary_and_across_a_restart";
    if !require_root(TEST) {
        return;
    }
    for tool in ["podman", "runc", "catatonit"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip(TEST, &format!("{tool} is not installed (`cargo xtask setup` installs podman, runc and catatonit)"));
            return;
        }
    }
    let tmp = tempdir("deploy").unwrap();
    let dir = tmp.path();
    let podman = Podman::new(dir);
    let u = unique("deploy");
    let image = format!("localhost/zt-agent:{u}");
    let pod = format!("zt-agent-{u}");
    let pin_dir = format!("/sys/fs/bpf/{u}");
    let _cleanup = Cleanup { podman: &podman, pod: pod.clone(), image: image.clone(), pin_dir: pin_dir.clone() };

    // The image, from deploy/Containerfile, holding this build's agent.
    let o = Command::new(root().join("deploy/build-image.sh"))
        .arg(agent_bin())
        .arg(&image)
        .env("CONTAINERS_CONF", &podman.conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "build-image.sh: {}", text(&o));
    assert_eq!(podman.ok(&["run", "--rm", &image, "--version"]), format!("zt-agent {}", env!("CARGO_PKG_VERSION")));

    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let o = Command::new(agent_bin()).args(["audit", "key", "--key"]).arg(dir.join("keys/audit.key")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let cg = TestCgroup::new(&format!("/{u}/agent")).unwrap();
    let policy = policy("zt.test", &format!("    - name: contained\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let _ = podman.run(&[&["volume", "rm", "--force"][..], &KUBE_VOLUMES].concat());
    let play = dir.join("pod.json");
    std::fs::write(&play, pod_from_daemonset(&pod, &image, dir, &pin_dir, &policy)).unwrap();
    podman.ok(&["kube", "play", play.to_str().unwrap()]);
    let container = format!("{pod}-zt-agent");

    let ready = wait_ready(&podman, &pod, &container);
    assert!(ready.starts_with("ready: policy v1"), "{ready}");
    let status: Value = serde_json::from_str(&podman.ok(&["exec", &container, "/usr/bin/zt-agent", "status", "--json"])).unwrap();
    let paths: Vec<(String, String)> = serde_json::from_value(status["paths"].clone()).unwrap();
    let egress = &paths.iter().find(|(w, _)| w == "network enforcement").unwrap().1;
    assert!(!egress.contains("UNAVAILABLE") && !egress.contains("DEGRADED"), "{egress}");

    // A host process of the identity is denied, and nothing arrives; a
    // process without an identity (the control) connects.
    let far = Listener::new();
    let (denied, other) = attempts(cg.command(helper_bin()), &far.addr());
    assert!(denied > 0 && other == 0, "identity: {denied} denied, {other} not");
    let (denied, allowed) = attempts(Command::new(helper_bin()), &far.addr());
    assert!(denied == 0 && allowed > 0, "control: {denied} denied, {allowed} allowed");
    let denial = wait_until("the container's denial event", 30, || {
        container_lines(&podman, &container).into_iter().find(|e| e["kind"] == "connect" && e["connect"]["action"] == "denied")
    });
    assert_eq!(denial["identity"]["name"], "contained", "{denial}");
    assert_eq!(denial["node"], "deploy-test-node", "the node's name, not the pod's host name");
    assert_eq!(denial["connect"]["port"].as_u64(), Some(u64::from(far.port)));

    // Killed: the pinned programs keep denying while no agent runs; the
    // restarted container adopts them.
    podman.ok(&["kill", "--signal", "KILL", &container]);
    wait_until("the container stopped", 30, || {
        (podman.ok(&["inspect", &container, "--format", "{{.State.Running}}"]) == "false").then_some(())
    });
    let (denied, other) = attempts(cg.command(helper_bin()), &far.addr());
    assert!(denied > 0 && other == 0, "while the agent is down: {denied} denied, {other} not");
    podman.ok(&["start", &container]);
    let adopted = wait_until("the restarted agent adopted the pins", 90, || {
        container_lines(&podman, &container)
            .into_iter()
            .find(|e| e["kind"] == "agent" && e["agent"]["state"] == "started" && !e["agent"]["adopted"].is_null())
    });
    assert_eq!(adopted["agent"]["adopted"]["enforced_generation"], 1, "{adopted}");
    wait_ready(&podman, &pod, &container);
    let (denied, other) = attempts(cg.command(helper_bin()), &far.addr());
    assert!(denied > 0 && other == 0, "after the restart: {denied} denied, {other} not");
}
