//! Shared fixtures for the integration tests and benchmarks: a real agent
//! process, real cgroups, loopback listeners, and root/feature checks that
//! skip loudly.
//!
//! Tests that need root carry `#[ignore = "needs root …"]`: plain
//! `cargo test` lists them as ignored, and `cargo xtask test` runs them with
//! `--include-ignored` when it runs as root.
//!
//! # Layout
//! - [`skip`], [`skip_variant`]: loud skips decided at run time, uncaptured.
//! - [`require_root`]: the runtime guard of the root tests.
//! - [`agent_bin`], [`helper_bin`]: the binaries under test.
//! - [`tempdir`]: a private temporary directory, removed on drop.
//! - [`Agent`]: `zt-agent run` with a policy, events in a file, stopped by SIGTERM.
//! - [`TestCgroup`]: a cgroup v2 subtree, removed (processes killed) on drop.
//! - [`Listener`]: a loopback TCP listener that accepts and drops.
//! - [`our_loaded_programs`]: which of our programs the kernel still holds.
//! - [`flood`]: the flood attack (one identity floods, another is quiet).
pub mod flood;
pub mod mtls;
pub mod siem;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// A name unique to this test process (cgroups).
/// CLOCK_MONOTONIC now, in ns: a time two processes can compare.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub fn unique(name: &str) -> String {
    format!("zt-test-{name}-{}", std::process::id())
}

/// A private temporary directory (`zt-test-<name>-XXXXXX` under the system
/// temp dir, mode 0700), removed with everything in it when dropped.
pub fn tempdir(name: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(&format!("zt-test-{name}-")).tempdir().context("creating a temporary directory")
}

/// Reports that `test` is skipped at run time (a kernel feature or tool is
/// missing), then the test returns early. libtest reports it as `ok`, so the
/// line is the only trace of the skip: it goes to the process's stderr
/// directly, because libtest captures `print!`/`eprint!` (not writes to the
/// `std::io` handles) and would show them only for a failing test.
/// `cargo xtask test` counts these lines as skipped, not passed.
///
/// Tests that need root are `#[ignore = "needs root …"]` instead (libtest
/// counts and names those); `cargo xtask test` runs them as root.
pub fn skip(test: &str, why: &str) {
    write_skip_line(test, why);
}

/// Reports that one variant of `test` is skipped while the rest of the test
/// runs: the line reads `SKIPPED <test>/<variant>: <why>`; `cargo xtask test`
/// counts it as skipped and still counts the test as passed if it passes.
pub fn skip_variant(test: &str, variant: &str, why: &str) {
    write_skip_line(&format!("{test}/{variant}"), why);
}

fn write_skip_line(name: &str, why: &str) {
    use std::io::Write as _;
    // One write_all of the whole line, so that it is not interleaved with
    // other output; a failed write to stderr has nowhere better to go.
    let _ = std::io::stderr().lock().write_all(format!("SKIPPED {name}: {why}\n").as_bytes());
}

/// The runtime guard of the root tests (which are `#[ignore]`d for plain
/// `cargo test`): returns false after a loud [`skip`] when not root, e.g.
/// under `cargo test -- --include-ignored` as a normal user.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root (see its #[ignore] reason); run `cargo xtask test` as root");
    false
}

/// A tmpfs of a given size mounted on a private temporary directory,
/// unmounted (lazily, so a lingering open file cannot keep it) when dropped.
/// Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(name: &str, bytes: u64) -> anyhow::Result<Self> {
        use nix::mount::{MsFlags, mount};
        let dir = tempdir(name)?;
        let data = format!("size={bytes},mode=0700");
        mount(Some("tmpfs"), dir.path(), Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
            .with_context(|| format!("mounting a {bytes}-byte tmpfs on {}", dir.path().display()))?;
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with `<name>` until a write fails with ENOSPC
    /// (the file is kept); returns its path.
    pub fn fill(&self, name: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let path = self.path().join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        for chunk in [64 << 10, 4 << 10, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(n) if n == chunk => {}
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(e).context("filling the tmpfs"),
                }
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The zt-agent binary: `$ZT_AGENT_BIN` (set by `cargo xtask test`), else the
/// debug build in this workspace.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ZT_AGENT_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/zt-agent");
    assert!(p.exists(), "{} missing: run the tests with `cargo xtask test`", p.display());
    p
}

/// The test helper binary (built with this package).
pub fn helper_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Integration test binaries live in target/<profile>/deps; bins one up.
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let p = dir.join("zt-test-helper");
    assert!(p.exists(), "{} missing (built with the zt-tests package)", p.display());
    p
}

/// A copy of the helper at `dest` (a file of its own), without debug
/// information: the debug build is about 200 MB, which a guest's tmpfs
/// cannot hold many of and which takes user space long to hash.
pub fn stripped_helper(dest: &Path) {
    let status = Command::new("strip").arg("-o").arg(dest).arg(helper_bin()).status().expect("running strip (binutils)");
    assert!(status.success(), "strip -o {}: {status}", dest.display());
}

/// What `zt-test-helper FORM... OUT` did, run by `cmd`: the result line
/// it wrote to `out`, or "KILLED" when it died of SIGKILL.
pub fn helper_result(mut cmd: Command, form: &[&str], out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let status = cmd.args(form).arg(out).status().expect("running zt-test-helper");
    if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL) {
        return "KILLED".into();
    }
    assert!(status.success(), "{form:?}: {status}");
    std::fs::read_to_string(out).expect("the helper's result")
}

pub fn cgroup2_root() -> PathBuf {
    zt_agent::host::cgroup2_mount().expect("cgroup v2 mount")
}

/// A cgroup v2 directory (relative path `rel`), created now and removed on
/// drop after killing whatever is left in it.
pub struct TestCgroup {
    pub rel: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new(rel: &str) -> anyhow::Result<Self> {
        let dir = cgroup2_root().join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { rel: rel.to_string(), dir })
    }

    /// A command whose process moves itself into this cgroup before exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = std::fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs")).expect("cgroup.procs");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(procs);
        // SAFETY: only write(2) between fork and exec. The fd is leaked in
        // the parent on purpose (one per command, closed at exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for e in walkdirs(&self.dir) {
            if let Ok(t) = std::fs::read_to_string(e.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.parse::<i32>().ok()));
            }
        }
        out
    }
}

fn walkdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children first.
        let mut dirs = walkdirs(&self.dir);
        dirs.reverse();
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        // And the empty parents we created (best effort).
        let mut p = self.dir.parent().map(Path::to_path_buf);
        let root = cgroup2_root();
        while let Some(dir) = p {
            if dir == root || std::fs::remove_dir(&dir).is_err() {
                break;
            }
            p = dir.parent().map(Path::to_path_buf);
        }
    }
}

/// A loopback listener that accepts and drops connections on a thread.
pub struct Listener {
    pub port: u16,
}

impl Listener {
    pub fn new() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
        Self { port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for Listener {
    fn default() -> Self {
        Self::new()
    }
}

/// podman (the image, DaemonSet and Kubernetes tests) with a private config: runc (crun refuses this host's hybrid
/// cgroup layout), cgroupfs, no systemd, and the session's own rlimits (the
/// defaults ask for more than an unprivileged sandbox may have).
pub struct Podman {
    pub conf: PathBuf,
}

impl Podman {
    pub fn new(dir: &Path) -> Self {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        let nofile = limit.rlim_max;
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            ),
        )
        .unwrap();
        Podman { conf }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman").args(args).env("CONTAINERS_CONF", &self.conf).output().expect("running podman")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// `GET path` from an HTTP/1.1 server at `addr`: the status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// One raw HTTP/1.1 request (with `Connection: close`): status code and body.
pub fn http_request(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (code, body.to_string())
}

/// A running `zt-agent run`, writing events to a file.
pub struct Agent {
    child: Option<Child>,
    pub events_path: PathBuf,
    pub socket: PathBuf,
    /// The agent's private directory (policy, events, socket, state, audit
    /// log unless `extra` names others); it lives as long as the `Agent`.
    pub dir: PathBuf,
    stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Removes `dir` when dropped: declared after `child` and dropped after
    /// `Drop for Agent` has killed the agent, so the agent never outlives it.
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent with `policy` (YAML text; unless `extra` has its own
    /// `--policy`) and waits until it has emitted its `agent started` event
    /// (programs attached, table seeded). Policy history and the audit log
    /// go to private directories unless `extra` names them.
    pub fn start(name: &str, policy: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_binary(&agent_bin(), name, policy, extra)
    }

    /// [`Agent::start`] with another copy of the agent's binary.
    pub fn start_binary(bin: &Path, name: &str, policy: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let tmp = tempdir(name)?;
        let dir = tmp.path().to_path_buf();
        let policy_path = dir.join("policy.yaml");
        std::fs::write(&policy_path, policy)?;
        let events_path = dir.join("events.jsonl");
        let socket = dir.join("control.sock");
        let own_policy: Vec<&std::ffi::OsStr> =
            if extra.contains(&"--policy") { vec![] } else { vec!["--policy".as_ref(), policy_path.as_os_str()] };
        let own_state: Vec<std::ffi::OsString> =
            if extra.contains(&"--state-dir") { vec![] } else { vec!["--state-dir".into(), dir.join("state").into()] };
        // Hermetic by default: nothing stays in the kernel after the test.
        let own_pins: &[&str] = if extra.contains(&"--pin-dir") { &[] } else { &["--no-pin"] };
        // Any free port: agents of several tests may run at once.
        let own_metrics: &[&str] = if extra.contains(&"--metrics-addr") { &[] } else { &["--metrics-addr", "127.0.0.1:0"] };
        let own_audit: Vec<std::ffi::OsString> = if extra.contains(&"--audit-dir") {
            vec![]
        } else {
            vec!["--audit-dir".into(), dir.join("audit").into(), "--audit-key".into(), dir.join("audit.key").into()]
        };
        let mut child = Command::new(bin)
            .arg("run")
            .args(own_policy)
            .args(own_state)
            .args(own_audit)
            .args(own_pins)
            .args(own_metrics)
            .arg("--events")
            .arg(&events_path)
            .arg("--socket")
            .arg(&socket)
            .args(if extra.contains(&"--show") { &[][..] } else { &["--show", "all"][..] })
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning zt-agent")?;
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let mut agent = Agent { child: Some(child), events_path, socket, dir, stderr_lines: lines, _tmp: tmp };
        // Under QEMU's emulation (`cargo xtask vm-test`) the verifier alone
        // takes tens of seconds for the LSM programs.
        let limit = if std::env::var_os("ZT_GUEST").is_some() { 300 } else { 60 };
        let deadline = Instant::now() + Duration::from_secs(limit);
        loop {
            if agent.events().iter().any(|e| e["kind"] == "agent" && e["agent"]["state"] == "started") {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                bail!("zt-agent exited early ({status}):\n{}", agent.stderr());
            }
            if Instant::now() > deadline {
                bail!("zt-agent did not start within {limit} s:\n{}", agent.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `zt-agent model record` of `identity` through this agent for
    /// `duration` (e.g. "4s") into `out`; its output piped.
    pub fn model_record(&self, identity: &str, out: &Path, duration: &str) -> std::process::Child {
        Command::new(agent_bin())
            .args(["model", "record", "--identity", identity, "--duration", duration, "--out"])
            .arg(out)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zt-agent model record")
    }

    /// `zt-agent status --json` of this agent.
    pub fn status(&self) -> Value {
        let out = Command::new(agent_bin()).args(["status", "--json", "--socket"]).arg(&self.socket).output().expect("zt-agent status");
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `HOST:PORT` of the agent's `/metrics`, `/healthz`, `/readyz`.
    pub fn metrics_addr(&self) -> String {
        let st = self.status();
        let url = st["metrics"].as_str().unwrap_or_else(|| panic!("no metrics endpoint in status: {}", st["metrics"]));
        url.trim_start_matches("http://").to_string()
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// Polls `status --json` until `pred` holds (20 s at most), returning it.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "status never showed {what}: {st}\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event written so far.
    pub fn events(&self) -> Vec<Value> {
        self.events_where(|_| true)
    }

    /// The events whose JSON line passes `keep` (a cheap test on the text,
    /// so a flood's millions of lines are not all parsed and held).
    pub fn events_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.events_path) else { return Vec::new() };
        text.lines().filter(|l| keep(l)).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// How many event lines have been written so far.
    pub fn event_count(&self) -> usize {
        std::fs::read(&self.events_path).map(|b| b.iter().filter(|c| **c == b'\n').count()).unwrap_or(0)
    }

    /// Waits until `pred` holds for some event (events are flushed within a
    /// poll interval), returning all events at that point.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ev = self.events();
            if ev.iter().any(&pred) {
                return Ok(ev);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; {} events so far; agent log:\n{}", ev.len(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (no chance to clean up), and reap it.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait for exit, return the final events.
    pub fn stop(self) -> anyhow::Result<Vec<Value>> {
        self.stop_keeping(|_| true)
    }

    /// [`Self::stop`], returning only the events [`Self::events_where`] keeps.
    pub fn stop_keeping(mut self, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<Value>> {
        let mut child = self.child.take().unwrap();
        let signalled = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let status = child.wait()?;
        signalled?;
        if !status.success() {
            bail!("zt-agent exited with {status}:\n{}", self.stderr());
        }
        Ok(self.events_where(keep))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `_tmp` removes the directory after this.
    }
}

/// Events of a given kind whose process argv contains `marker` (exec) or that
/// target `port` (connect).
pub fn execs_with<'a>(events: &'a [Value], marker: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "exec"
                && e["exec"]["argv"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.contains(marker))))
        })
        .collect()
}

pub fn connects_to(events: &[Value], port: u16) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "connect" && e["connect"]["port"] == port).collect()
}

/// The identity name of an event, or None.
pub fn identity_of(e: &Value) -> Option<&str> {
    e["identity"]["name"].as_str()
}

/// Runs `zt-agent uninstall --pin-dir` on the directory when dropped: a
/// test's private pins never outlive it.
pub struct Uninstall(pub PathBuf);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = std::process::Command::new(agent_bin()).args(["uninstall", "--pin-dir"]).arg(&self.0).status();
    }
}

/// (denied, allowed) TCP connects from `cmd` (the test helper, perhaps in
/// a cgroup) to `addr` during `ms`: its `connect-loop` mode.
pub fn connect_loop(mut cmd: std::process::Command, ms: u64, addr: &str) -> (u64, u64) {
    let out = cmd.args(["connect-loop", &ms.to_string(), addr]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// A policy with the given identities (YAML list items, indented by 4).
pub fn policy(trust_domain: &str, identities: &str) -> String {
    format!(
        "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata:\n  name: test\nspec:\n  trustDomain: {trust_domain}\n  identities:\n{identities}"
    )
}

/// Names of the loaded BPF programs that are ours (the kernel truncates
/// names to 15 bytes, so a loaded name is a prefix of one of ours).
pub fn our_loaded_programs() -> Vec<String> {
    zt_agent::bpf::loaded_program_names()
        .expect("listing loaded programs")
        .into_iter()
        .filter(|n| !n.is_empty() && zt_common::programs::ALL.iter().any(|p| p.starts_with(n.as_str())))
        .collect()
}
