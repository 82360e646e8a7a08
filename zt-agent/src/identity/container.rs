//! Container and pod ids parsed from cgroup v2 paths.
//!
//! Shapes handled (kubelet's cgroupfs and systemd drivers; containerd,
//! CRI-O, Docker, podman/libpod):
//! - `/kubepods/burstable/pod<uid>/<64 hex>` (cgroupfs driver)
//! - `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<64 hex>.scope`
//! - `.../crio-<64 hex>.scope` (CRI-O; `crio-conmon-<64 hex>.scope` is the
//!   container's monitor, the same container)
//! - `/system.slice/docker-<64 hex>.scope`, `/docker/<64 hex>`
//! - `/libpod_parent/libpod-<64 hex>` (podman, cgroupfs), `/machine.slice/libpod-<64 hex>.scope`
//!   and `.../libpod-<64 hex>.scope/container` (podman, systemd)
//!
//! The last container id on the path wins (a container nested in another's
//! cgroup is the inner one).
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
    // "<runtime>-<id>[.scope]": cri-containerd-, crio-, crio-conmon-, docker-, libpod-.
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    let (prefix, id) = stem.rsplit_once(['-', ':'])?;
    let known = ["cri-containerd", "crio", "crio-conmon", "docker", "libpod", "containerd"].contains(&prefix);
    (known && is_container_id(id)).then(|| id.into())
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

    /// Paths as each runtime and driver lays them out (recorded from
    /// nodes running each: kubelet with containerd on the cgroupfs and the
    /// systemd drivers, CRI-O, Docker, and podman here).
    #[test]
    fn every_runtime_layout() {
        let u = UID.replace('-', "_");
        for (path, pod, container) in [
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(UID), Some(ID)),
            (format!("/kubepods/pod{UID}/{ID}"), Some(UID), Some(ID)),
            (format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"), Some(UID), Some(ID)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"), Some(UID), Some(ID)),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"),
                Some(UID),
                Some(ID),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope/container"),
                Some(UID),
                Some(ID),
            ),
            // The pod's own cgroup (its pause process, or a process moved there).
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"), Some(UID), None),
            (format!("/libpod_parent/libpod-{ID}"), None, Some(ID)),
            (format!("/machine.slice/libpod-{ID}.scope"), None, Some(ID)),
            (format!("/machine.slice/libpod-{ID}.scope/container"), None, Some(ID)),
            (format!("/system.slice/docker-{ID}.scope"), None, Some(ID)),
        ] {
            let w = parse(&path);
            assert_eq!((w.pod_uid.as_deref(), w.container_id.as_deref()), (pod, container), "{path}");
        }
        // Look-alikes are not ids.
        for path in [
            format!("/machine.slice/libpod-conmon-{}.scope", &ID[..60]),
            format!("/system.slice/unknown-{ID}.scope"),
            "/kubepods/burstable/podnot-a-uid".to_string(),
            format!("/user.slice/user-0.slice/session-{}.scope", &ID[..12]),
        ] {
            assert_eq!(parse(&path).container_id, None, "{path}");
        }
    }

    #[test]
    fn docker_and_plain() {
        assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")).container_id.as_deref(), Some(ID));
        assert_eq!(parse(&format!("/docker/{ID}")).container_id.as_deref(), Some(ID));
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), Workload::default());
        assert_eq!(parse("/zt-agents/pod1"), Workload::default());
    }
}
