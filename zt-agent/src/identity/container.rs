//! Container and pod ids parsed from cgroup v2 paths.
//!
//! Shapes handled (cgroupfs and systemd drivers of kubelet, containerd,
//! CRI-O, Docker):
//! - `/kubepods/burstable/pod<uid>/<64 hex>`
//! - `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<64 hex>.scope`
//! - `/system.slice/docker-<64 hex>.scope`, `/docker/<64 hex>`, `crio-<64 hex>.scope`
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub pod_uid: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pod_uid(component: &str) -> Option<Arc<str>> {
    // cgroupfs: "pod<uid>"; systemd: "kubepods-<qos>-pod<uid_with_underscores>.slice"
    let rest = component.strip_suffix(".slice").unwrap_or(component);
    let idx = rest.rfind("pod")?;
    if idx > 0 && !rest[..idx].ends_with('-') {
        return None;
    }
    let uid = rest[idx + 3..].replace('_', "-");
    let valid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then(|| uid.into())
}

fn container_id(component: &str) -> Option<Arc<str>> {
    if is_container_id(component) {
        return Some(component.into());
    }
    let stem = component.strip_suffix(".scope")?;
    let id = stem.rsplit(['-', ':']).next()?;
    is_container_id(id).then(|| id.into())
}

pub fn parse(cgroup_path: &str) -> Workload {
    let mut w = Workload::default();
    for c in cgroup_path.split('/') {
        if w.pod_uid.is_none() {
            w.pod_uid = pod_uid(c);
        }
        if let Some(id) = container_id(c) {
            w.container_id = Some(id);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f2b4c1e-9a7d-4e3b-8c5a-1d2e3f4a5b6c";

    #[test]
    fn cgroupfs_driver() {
        let w = parse(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn systemd_driver() {
        let u = UID.replace('-', "_");
        let w = parse(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn docker_and_plain() {
        assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")).container_id.as_deref(), Some(ID));
        assert_eq!(parse(&format!("/docker/{ID}")).container_id.as_deref(), Some(ID));
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), Workload::default());
        assert_eq!(parse("/zt-agents/pod1"), Workload::default());
    }
}
