//! Run-time switches user space writes into the `CONFIG` map.

/// Run-time switches, the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Ring buffer fill level (bytes) above which a submit wakes the consumer;
    /// below it records are submitted without a wakeup and the consumer polls.
    pub wakeup_bytes: u32,
    /// The same for the security ring.
    pub security_wakeup_bytes: u32,
    /// Connect events per second each identity may cause on each CPU (its
    /// budget, see `policy::IdentityBudget`); 0: unlimited.
    pub event_rate: u32,
}
const _: () = assert!(size_of::<Config>() == 16);

/// [`Config::flags`] bits.
pub mod config_flags {
    /// Emit connect events for processes without an identity too.
    pub const OBSERVE_ALL_CONNECTS: u32 = 1 << 0;
    /// The `bprm_check_security` LSM program is attached: exec rules are
    /// refused there, so `sched_process_exec` kills no one for them.
    pub const EXEC_LSM: u32 = 1 << 1;
    /// The `file_open` LSM program is attached: io_uring opens meet it, so
    /// `guard_uring` kills none for file rules.
    pub const FILE_LSM: u32 = 1 << 2;
    /// `rename_exit` is attached, so `FILE_EPOCH` counts renames and
    /// `file_open` may use its decision cache (`OPEN_CACHE`).
    pub const OPEN_CACHE: u32 = 1 << 3;
}
