//! `zt-agent run --demo`: a visible workload for the embedded policy, a
//! shell in the cgroup `/zt-agents/demo` that every 2 s runs a command and
//! connects to a loopback listener on 127.0.0.1 (allowed) and 127.0.0.2
//! (denied: EPERM).
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;

/// Creates the demo cgroup (before seeding, so the kernel learns its id).
pub fn prepare_cgroup(cgroup2: &Path) -> anyhow::Result<PathBuf> {
    let dir = cgroup2.join("zt-agents").join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating demo cgroup {}", dir.display()))?;
    Ok(dir)
}

pub struct Demo {
    child: tokio::process::Child,
    listener: tokio::task::JoinHandle<()>,
    cgroup: PathBuf,
}

impl Demo {
    pub async fn start(cgroup: PathBuf) -> anyhow::Result<Demo> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        // Opened here, written in the child: no allocation between fork and exec.
        let procs = std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
        let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        // 127.0.0.1 is allowed by the default policy, 127.0.0.2 is not (EPERM).
        let script = format!(
            "while :; do uname -r >/dev/null; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; (exec 3<>/dev/tcp/127.0.0.2/{port}) 2>/dev/null; sleep 2; done"
        );
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (setsid, write) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting the demo workload (bash)")?;
        drop(procs);
        tracing::info!(
            "demo workload: pid {} in cgroup {} connecting to 127.0.0.1:{port} (allowed) and 127.0.0.2:{port} (denied) every 2 s",
            child.id().unwrap_or(0),
            cgroup.display()
        );
        Ok(Demo { child, listener: accept, cgroup })
    }

    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The shell is a process group leader (setsid): end the group.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.listener.abort();
    }

    /// Removes the (now empty) demo cgroup.
    pub fn remove_cgroup(self) {
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}
