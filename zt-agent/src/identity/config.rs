//! The identity view of the policy in force: what the resolver matches.
//! The policy module builds it (with ids that stay stable across reloads);
//! nothing here knows the policy language.
use super::selector::Selector;

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub name: String,
    pub trust_domain: String,
    pub identities: Vec<Identity>,
}

/// One workload identity; `id` is what the kernel tables hold (0: none).
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: u32,
    pub name: String,
    pub spiffe_id: String,
    pub selectors: std::sync::Arc<[Selector]>,
    /// The policy's `anomaly:` block: its processes' syscalls are scored.
    pub anomaly: Option<crate::policy::model::Anomaly>,
}
