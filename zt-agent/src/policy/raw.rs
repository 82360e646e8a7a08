//! The raw serde layer: the YAML's shapes, with `Spanned` positions for
//! every value an error can point at. Nothing here is validated;
//! [`super::parse`] turns these into the model.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDoc {
    pub(super) api_version: Spanned<String>,
    pub(super) kind: Spanned<String>,
    #[serde(default)]
    pub(super) metadata: RawMetadata,
    pub(super) spec: RawSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted for Kubernetes-style documents, not used")]
    pub(super) labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSpec {
    #[serde(default)]
    pub(super) trust_domain: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) identities: Vec<RawIdentity>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawIdentity {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) spiffe_id: Option<Spanned<String>>,
    pub(super) selectors: Spanned<Vec<RawSelector>>,
    #[serde(default)]
    pub(super) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) default_action: Option<Spanned<RawDefault>>,
    #[serde(default)]
    pub(super) sockets: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) anomaly: Option<Spanned<RawAnomaly>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAnomaly {
    #[serde(default)]
    pub(super) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) response: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) false_positive_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) learn_calls: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDefault {
    All(String),
    Each(RawDefaults),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[serde(default)]
    pub(super) egress: Option<String>,
    #[serde(default)]
    pub(super) files: Option<String>,
    #[serde(default)]
    pub(super) exec: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSelector {
    #[serde(default)]
    pub(super) cgroup: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) exe: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) exe_digest: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) uid: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) descendant_of: Option<Spanned<Box<RawSelector>>>,
    #[serde(default)]
    pub(super) k8s: Option<Spanned<RawK8s>>,
}

/// Kubernetes selectors (pod namespace/labels), resolved from the pod
/// metadata of the process's cgroup (`kube`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawK8s {
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) pod_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    pub(super) identity: Spanned<String>,
    pub(super) action: Spanned<String>,
    #[serde(default)]
    pub(super) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) when: Option<Spanned<RawWhen>>,
    #[serde(default)]
    pub(super) egress: Vec<Spanned<RawEgress>>,
    #[serde(default)]
    pub(super) files: Vec<Spanned<RawFiles>>,
    #[serde(default)]
    pub(super) exec: Vec<Spanned<RawExec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWhen {
    #[serde(default)]
    pub(super) time_window: Option<Spanned<RawTimeWindow>>,
    #[serde(default)]
    pub(super) rego: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeWindow {
    #[serde(default)]
    pub(super) days: Vec<Spanned<String>>,
    pub(super) start: Spanned<String>,
    pub(super) end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    #[serde(default)]
    pub(super) to: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) dns: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    /// `None` when absent (every port); an empty list is an error.
    pub(super) ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    #[serde(default)]
    pub(super) protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPort {
    One(u32),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub(super) paths: Vec<Spanned<String>>,
    pub(super) access: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExec {
    pub(super) paths: Vec<Spanned<String>>,
}
