//! The identity view of the policy in force: what the resolver matches.
//! Built from a [`crate::policy::Policy`] by [`crate::policy::identity_config`],
//! with ids from the stable [`crate::policy::IdRegistry`].
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
    pub selectors: Vec<Selector>,
}

impl IdentityConfig {
    /// Parses identity-file text alone (tests and tools).
    pub fn parse(file: &str, text: &str) -> Result<Self, crate::policy::PolicyErrors> {
        let bundle = crate::policy::Bundle { files: vec![(file.to_string(), text.to_string())] };
        let policy = bundle.parse()?;
        let ids = crate::policy::IdRegistry::for_policy(&policy).expect("a handful of identities fits");
        Ok(crate::policy::identity_config(&policy, &ids))
    }
}
