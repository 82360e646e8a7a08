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
}
const _: () = assert!(size_of::<Config>() == 8);

/// [`Config::flags`] bits.
pub mod config_flags {
    /// Emit connect events for processes without an identity too.
    pub const OBSERVE_ALL_CONNECTS: u32 = 1 << 0;
}
