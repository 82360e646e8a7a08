//! Tests that run inside the QEMU test guest (`cargo xtask vm-test`, also
//! run by `cargo xtask test`): a stock Debian kernel, where BPF LSM loads
//! (this host refuses it). On the host they skip, loudly.
use std::process::Command;

use serde_json::Value;
use zt_tests::{agent_bin, require_root, skip};

/// Set by the guest's init (`zt-guest-init`).
fn in_guest(test: &str) -> bool {
    if std::env::var_os("ZT_GUEST").is_some() {
        return true;
    }
    skip(test, "runs in the QEMU test guest: `cargo xtask vm-test` (part of `cargo xtask test`)");
    false
}

#[test]
#[ignore = "needs root: loads eBPF programs"]
fn bpf_lsm_programs_load_in_the_guest_kernel() {
    let name = "bpf_lsm_programs_load_in_the_guest_kernel";
    if !require_root(name) || !in_guest(name) {
        return;
    }
    let out = Command::new(agent_bin()).args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    let feature = |n: &str| probe["features"].as_array().unwrap().iter().find(|f| f["name"] == n).cloned().unwrap();
    for f in ["bpf_lsm", "tracepoint", "cgroup_sock_addr", "ring_buffer", "kernel_btf", "bpf_send_signal"] {
        assert_eq!(feature(f)["available"], true, "{f} in the guest kernel {}: {}", probe["kernel"], feature(f));
    }
}
