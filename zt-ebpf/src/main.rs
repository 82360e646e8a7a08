//! zt-ebpf: the kernel side of zt-agent, one object.
//!
//! # Layout
//! - `maps`: every map of ours (`#[map]` statics; aya-log-ebpf adds its own
//!   `AYA_LOGS`) and the read-only globals.
//! - `events`: ring buffer submit with batched wakeups, loss counting.
//! - `lineage`: process table at fork/exec/exit, argv capture, exec/exit events.
//! - `net`: egress enforcement at the cgroup `connect4`/`connect6` and
//!   `sendmsg4`/`sendmsg6` hooks: a denied connect or UDP send fails with
//!   EPERM (audit mode only reports it); decisions are counted and reported
//!   as aggregated connect events.
//! - `unix`: Unix-socket decisions at the cgroup `connect_unix` and
//!   `sendmsg_unix` hooks (EPERM), from the address as the caller wrote it.
//! - `guard`: what agent identities may not do around the egress hooks:
//!   socket kinds their policy does not allow (EPERM at `sock_create`, or
//!   SIGKILL at the `socket` tracepoint), ptrace and memory access across
//!   identities, `pidfd_getfd`, `bpf(2)` (SIGKILL).
//! - `file`: file and exec rules, at BPF LSM hooks (EPERM) where the
//!   kernel loads them, and for exec at `sched_process_exec` (SIGKILL)
//!   where it does not; file events.
//! - `telemetry`: the syscalls (and io_uring submissions) of identities
//!   with telemetry on, batched for the anomaly model.
//! - `probe`: tiny programs `zt-agent probe` loads to learn what this kernel runs.
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in `core::sync::atomic`
// (no compare-and-swap); the intrinsic lowers to BPF's atomic add, which
// `file::rename_exit` needs.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for atomic_xadd")]
// Every `unsafe` block says why it is sound (checked by clippy).
#![warn(clippy::undocumented_unsafe_blocks)]

mod events;
mod file;
mod guard;
mod lineage;
mod maps;
mod net;
mod probe;
mod telemetry;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic at run time; any reachable panic path makes
    // the verifier reject the program, which is what we want.
    loop {}
}

// The loader reads the licence from the `license` section (a GPL-compatible
// one unlocks GPL-only helpers such as bpf_probe_read_user_str); `no_mangle`
// keeps the one symbol named LICENSE.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
