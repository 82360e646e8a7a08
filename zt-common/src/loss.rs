//! Indices of the per-CPU `LOSS` counters.

/// `bpf_ringbuf_reserve` failed for an exec event.
pub const RINGBUF_EXEC: u32 = 0;
pub const RINGBUF_EXIT: u32 = 1;
pub const RINGBUF_CONNECT: u32 = 2;
/// The process table was full at fork/exec (attribution lost for a process).
pub const PROC_TABLE_FULL: u32 = 3;
/// argv read at `sys_enter_execve[at]` could not be stored because the
/// `EXEC_ARGS` insert failed (table full). A fault reading argv is not
/// counted here: the argv read so far is stored, marked neither truncated
/// nor missing.
pub const EXEC_ARGS: u32 = 4;
/// The egress aggregation table was full (the attempt was reported
/// without aggregation, so this is not a lost event).
pub const AGG_FULL: u32 = 5;
/// `bpf_ringbuf_reserve` failed for a guard event (the call was still
/// refused or the process killed; only the record is lost).
pub const RINGBUF_GUARD: u32 = 6;
/// `bpf_ringbuf_reserve` failed for a Unix-socket event (the decision
/// was still enforced and counted).
pub const RINGBUF_UNIX: u32 = 7;
pub const COUNT: u32 = 8;
pub const NAMES: [&str; COUNT as usize] =
    ["ringbuf_exec", "ringbuf_exit", "ringbuf_connect", "proc_table_full", "exec_args", "egress_agg_full", "ringbuf_guard", "ringbuf_unix"];

#[cfg(test)]
mod tests {
    #[test]
    fn one_name_per_counter() {
        assert_eq!(super::NAMES.len(), super::COUNT as usize);
    }
}
