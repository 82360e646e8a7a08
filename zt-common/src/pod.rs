//! `aya::Pod` for the map key and value types and the ring records (feature `user`).
use crate::{Config, ConnectEvent, EventHeader, ExecArgs, ExecEvent, ExecKey, ExecPick, ExitEvent, ProcInfo, policy};

// SAFETY: all are #[repr(C)], Copy, contain only integers and byte arrays,
// and have no implicit padding (checked by the size asserts next to each type).
unsafe impl aya::Pod for ProcInfo {}
unsafe impl aya::Pod for ExecKey {}
unsafe impl aya::Pod for ExecPick {}
unsafe impl aya::Pod for crate::DigestKey {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for ExecArgs {}
unsafe impl aya::Pod for policy::NetKeyData {}
unsafe impl aya::Pod for policy::NetRuleList {}
unsafe impl aya::Pod for policy::IdentityKey {}
unsafe impl aya::Pod for policy::IdentityPolicy {}
unsafe impl aya::Pod for policy::ActivePolicy {}
unsafe impl aya::Pod for policy::IdentityCounters {}
unsafe impl aya::Pod for policy::AggKey {}
unsafe impl aya::Pod for policy::AggSlot {}
unsafe impl aya::Pod for policy::IdentityBudget {}
unsafe impl aya::Pod for crate::loss::SecurityLoss {}
unsafe impl aya::Pod for EventHeader {}
unsafe impl aya::Pod for ExecEvent {}
unsafe impl aya::Pod for ExitEvent {}
unsafe impl aya::Pod for ConnectEvent {}
unsafe impl aya::Pod for crate::AggEvictEvent {}
unsafe impl aya::Pod for crate::unix::UnixKeyData {}
unsafe impl aya::Pod for crate::unix::UnixEvent {}
unsafe impl aya::Pod for crate::path_policy::ObjectKey {}
unsafe impl aya::Pod for crate::path_policy::ObjectRules {}
unsafe impl aya::Pod for crate::path_policy::FileAggKey {}
unsafe impl aya::Pod for crate::path_policy::FileAggValue {}
unsafe impl aya::Pod for crate::path_policy::FileEvent {}
unsafe impl aya::Pod for crate::syscalls::SyscallBatch {}
