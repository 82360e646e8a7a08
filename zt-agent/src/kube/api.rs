//! The parts of the Kubernetes API's JSON the agent reads: a `PodList`
//! (`GET /api/v1/pods`) and the watch stream's events (one JSON object per
//! line: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`). Every other
//! field is ignored; a pod without a UID is not a pod.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::PodMeta;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// `<runtime>://<id>`; empty while the container is being created.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Deserialize)]
pub struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
}

#[derive(Debug, Deserialize)]
pub struct PodList {
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Pod>,
}

/// One line of a watch stream. `object` stays raw: a pod for most types, a
/// `Status` for `ERROR`.
#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// The `Status` an `ERROR` event carries.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl Pod {
    /// The pod as the cache keeps it; None without a UID.
    pub fn meta(self) -> Option<PodMeta> {
        if self.metadata.uid.is_empty() {
            return None;
        }
        let s = self.status;
        let containers = s
            .container_statuses
            .iter()
            .chain(&s.init_container_statuses)
            .chain(&s.ephemeral_container_statuses)
            .filter_map(|c| c.container_id.split_once("://").map(|(_, id)| id.to_string()))
            .filter(|id| !id.is_empty())
            .collect();
        Some(PodMeta {
            namespace: self.metadata.namespace,
            name: self.metadata.name,
            uid: self.metadata.uid,
            labels: self.metadata.labels,
            service_account: self.spec.service_account_name,
            containers,
        })
    }
}

/// What a watch line means for the cache.
#[derive(Debug, PartialEq)]
pub enum Change {
    Upsert(PodMeta, String),
    Delete(String, String),
    /// Only a new resource version (a bookmark, or an object that is not a pod).
    Version(String),
    /// The watch's resource version is too old (HTTP 410): list again.
    Expired(String),
    /// Another error the server sent.
    Error(String),
}

/// Reads one line of a watch stream.
pub fn change(line: &[u8]) -> Result<Change, serde_json::Error> {
    let ev: WatchEvent = serde_json::from_slice(line)?;
    if ev.kind == "ERROR" {
        let st: Status = serde_json::from_value(ev.object).unwrap_or_default();
        let text = format!("{} ({}): {}", st.code, st.reason, st.message);
        return Ok(if st.code == 410 || st.reason == "Expired" || st.reason == "Gone" {
            Change::Expired(text)
        } else {
            Change::Error(text)
        });
    }
    let pod: Pod = serde_json::from_value(ev.object)?;
    let version = pod.metadata.resource_version.clone();
    Ok(match ev.kind.as_str() {
        "ADDED" | "MODIFIED" => match pod.meta() {
            Some(m) => Change::Upsert(m, version),
            None => Change::Version(version),
        },
        "DELETED" => Change::Delete(pod.metadata.uid, version),
        _ => Change::Version(version),
    })
}
